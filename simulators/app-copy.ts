// An app's local copy (issue #14): what it got live on users/{uid}/alerts plus what delta sync returned, deduplicated
// by id, kept in step with one commit-order cursor. At the end of a run the parent compares each copy with the
// database for its user (swarm.ts compareAppCopies): nothing missing, nothing extra, no row synced twice.
import crypto from 'node:crypto'
import type { MqttClient } from 'mqtt'
import type { AlertMessage } from '../src/outputs/payloads.js'
import { syncResponseSchema } from '../src/outputs/sync.js'

/** What a worker reports of one app at the end. */
export interface AppCopyWire {
  userId: string
  /** the cursor of the last sync that reached the end (everything committed up to it is in the copy) */
  cursor: string
  /** key → version: r:<reading id> → '', a:<alert id> → opened|resolved, c:<consent id> → '', n:<recommendation id> → '' */
  items: [string, string][]
  /** rows a sync returned a second time in the same version (never expected) */
  duplicates: number
  syncs: number
  /** the final catch-up did not finish (broker unreachable): the comparison fails */
  incomplete: boolean
}

const PAGE = 2000
const REQUEST_TIMEOUT_MS = 30_000

export class AppCopy {
  private readonly items = new Map<string, string>()
  private readonly synced = new Set<string>()
  private cursor = '0'
  private duplicates = 0
  private syncs = 0
  private running: Promise<boolean> | null = null
  private again = false
  private readonly waiting = new Map<string, (body: unknown) => void>()
  complete = false

  constructor(
    readonly userId: string,
    private readonly client: () => MqttClient | null,
  ) {}

  get responseTopic(): string {
    return `users/${this.userId}/sync/response`
  }

  /** users/{uid}/alerts: the newest state wins (a resolution never goes back to opened). */
  live(alert: AlertMessage): void {
    const key = `a:${alert.id}`
    if (this.items.get(key) !== 'resolved') this.items.set(key, alert.state)
  }

  onResponse(payload: Buffer): void {
    let body: { requestId?: unknown }
    try {
      body = JSON.parse(payload.toString('utf8')) as { requestId?: unknown }
    } catch {
      return
    }
    if (typeof body.requestId !== 'string') return
    const resolve = this.waiting.get(body.requestId)
    if (!resolve) return
    this.waiting.delete(body.requestId)
    resolve(body)
  }

  /** Syncs until up to date (one run at a time; a call during a run makes it go once more). True when it got there. */
  sync(): Promise<boolean> {
    if (this.running) {
      this.again = true
      return this.running
    }
    this.running = (async () => {
      let ok = false
      do {
        this.again = false
        ok = await this.pages()
      } while (this.again && ok)
      this.running = null
      return ok
    })()
    return this.running
  }

  private async pages(): Promise<boolean> {
    for (let i = 0; i < 100_000; i++) {
      const c = this.client()
      if (!c?.connected) return false
      const requestId = crypto.randomUUID()
      const answer = new Promise<unknown>((resolve) => {
        this.waiting.set(requestId, resolve)
        setTimeout(() => {
          if (this.waiting.delete(requestId)) resolve(null)
        }, REQUEST_TIMEOUT_MS).unref()
      })
      c.publish(`users/${this.userId}/sync/request`, JSON.stringify({ requestId, cursor: this.cursor, limit: PAGE }), {
        qos: 1,
      })
      const parsed = syncResponseSchema.safeParse(await answer)
      // An error answer (database unavailable) or none (link lost): the cursor stays, a later sync resumes there.
      if (!parsed.success) return false
      const page = parsed.data
      this.syncs++
      for (const r of page.readings ?? []) this.take(`r:${r.id}`, '')
      for (const a of page.alerts ?? []) this.take(`a:${a.id}`, a.state)
      for (const c of page.consents ?? []) this.take(`c:${c.id}`, '')
      for (const n of page.recommendations ?? []) {
        const id = (n as { id?: unknown }).id
        if (typeof id === 'string') this.take(`n:${id}`, '')
      }
      this.cursor = page.nextCursor
      if (!page.more) {
        this.complete = true
        return true
      }
    }
    return false
  }

  private take(key: string, version: string): void {
    const seen = `${key}|${version}`
    if (this.synced.has(seen)) this.duplicates++
    else this.synced.add(seen)
    // Sync is in commit order: what it says is newer than anything it said before about the same row.
    if (key.startsWith('a:') && version === 'opened' && this.items.get(key) === 'resolved') return
    this.items.set(key, version)
  }

  wire(): AppCopyWire {
    return {
      userId: this.userId,
      cursor: this.cursor,
      items: [...this.items],
      duplicates: this.duplicates,
      syncs: this.syncs,
      incomplete: !this.complete,
    }
  }
}
