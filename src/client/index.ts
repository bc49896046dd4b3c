// `pulsegate/client`: a small typed client for app developers. Connects with a token over MQTT (WebSocket in a browser
// or Node, or TCP/TLS), subscribes to the user's alerts, live snapshots and recommendations, and runs delta sync with
// cursors, page after page. Payloads are parsed with the server's own zod schemas (src/outputs, src/insights), so the
// types here are the broker's: a message that does not match is reported to onInvalid, never handed on untyped.
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import type { z } from 'zod'
import { type RecommendationPayload, recommendationPayloadSchema } from '../insights/payload.js'
import { type ConsentStateMessage, consentStateMessageSchema } from '../ops/consent-model.js'
import { type AlertMessage, alertMessageSchema, type LiveSnapshot, liveSnapshotSchema } from '../outputs/payloads.js'
import {
  type SyncCursor,
  type SyncKind,
  type SyncPage,
  type SyncResponse,
  syncResponseSchema,
} from '../outputs/sync-response.js'
import type { SyncRequest } from '../outputs/sync.js'
import { topicFor } from '../topics/grammar.js'

export type { AlertMessage, ConsentStateMessage, LiveSnapshot, RecommendationPayload, SyncCursor, SyncKind, SyncPage }

export interface PulsegateClientOptions {
  /** e.g. `ws://localhost:8080/mqtt` (an app), `wss://…/mqtt`, or `mqtts://host:8883` (a bridge) */
  url: string
  /** a JWT (`pulsegate token <userId> --role app`); sent as the MQTT password */
  token: string
  /** the token's `sub`: the pseudonymous user id whose topics this client uses */
  userId: string
  /** `<role>:<userId>[:<suffix>]`; default `app:<userId>:<random>` */
  clientId?: string
  /** anything else for mqtt.js (ca, keepalive, reconnectPeriod, …) */
  mqtt?: IClientOptions
  /** a message on a subscribed topic that does not match its schema (the contract and this client disagree) */
  onInvalid?: (topic: string, error: Error) => void
}

export interface SyncOptions {
  /** where the last sync stopped (its `cursor`); default: from the beginning */
  cursor?: SyncCursor
  kinds?: SyncKind[]
  /** rows per kind and page (1–5000, default 500) */
  limit?: number
  resolution?: SyncRequest['resolution']
  /** per page; default 30 s */
  timeoutMs?: number
}

export interface SyncResult {
  readings: NonNullable<SyncPage['readings']>
  alerts: NonNullable<SyncPage['alerts']>
  recommendations: NonNullable<SyncPage['recommendations']>
  /** send it as `cursor` next time: the sync continues after what this one returned */
  cursor: SyncCursor
  pages: number
}

/** The broker answered a sync request with an error (`bad_request`: detail says why; `unavailable`: retry). */
export class SyncFailedError extends Error {
  constructor(
    readonly code: 'bad_request' | 'bad_cursor' | 'unavailable' | 'timeout',
    detail: string,
  ) {
    super(`sync failed (${code})${detail ? `: ${detail}` : ''}`)
  }
}

type Handler<T> = (message: T) => void

/** Per-kind cursors merge (a page may advance only some kinds); an opaque cursor replaces the last one. */
function nextCursor(last: SyncCursor | undefined, next: SyncCursor): SyncCursor {
  if (typeof next !== 'object' || next === null || typeof last !== 'object' || last === null) return next
  return { ...last, ...next }
}

export class PulsegateClient {
  readonly #handlers = new Map<string, { schema: z.ZodType; handlers: Handler<never>[] }>()
  readonly #pending = new Map<string, (r: SyncResponse) => void>()
  #syncSubscribed: Promise<unknown> | null = null

  constructor(
    readonly mqtt: MqttClient,
    readonly userId: string,
    private readonly onInvalid: (topic: string, error: Error) => void = () => {},
  ) {
    mqtt.on('message', (topic, payload) => this.#dispatch(topic, payload))
  }

  /** Health alerts (`users/{uid}/alerts`, QoS 1): one `opened` and one `resolved` message per episode. */
  onAlert(handler: Handler<AlertMessage>): Promise<void> {
    return this.#subscribe(topicFor.userAlerts(this.userId), alertMessageSchema, 1, handler)
  }

  /** The latest snapshot (`users/{uid}/live`, retained, QoS 0): hr, zone, pace, distance, rank. */
  onLive(handler: Handler<LiveSnapshot>): Promise<void> {
    return this.#subscribe(topicFor.live(this.userId), liveSnapshotSchema, 0, handler)
  }

  /** Wellness recommendations (`users/{uid}/recommendations`, QoS 1); the same advice keeps its id. */
  onRecommendation(handler: Handler<RecommendationPayload>): Promise<void> {
    return this.#subscribe(topicFor.recommendations(this.userId), recommendationPayloadSchema, 1, handler)
  }

  /** The consent state (`users/{uid}/consent/state`, retained). */
  onConsentState(handler: Handler<ConsentStateMessage>): Promise<void> {
    return this.#subscribe(topicFor.consentState(this.userId), consentStateMessageSchema, 1, handler)
  }

  /** Sets consent for one purpose; the new state comes back on onConsentState. */
  async setConsent(purpose: keyof ConsentStateMessage['consents'], granted: boolean): Promise<void> {
    await this.mqtt.publishAsync(topicFor.consent(this.userId), JSON.stringify({ purpose, granted }), { qos: 1 })
  }

  /** One page of delta sync after `cursor`. */
  async syncPage(opts: SyncOptions = {}): Promise<SyncPage> {
    this.#syncSubscribed ??= this.mqtt.subscribeAsync(topicFor.syncResponse(this.userId), { qos: 1 })
    await this.#syncSubscribed
    const requestId = globalThis.crypto.randomUUID()
    const request: Partial<SyncRequest> = {
      requestId,
      // commit order by default ("0": from the beginning): late uploads are never skipped (docs/contract.md)
      cursor: opts.cursor ?? '0',
      ...(opts.kinds ? { kinds: opts.kinds } : {}),
      ...(opts.limit !== undefined ? { limit: opts.limit } : {}),
      ...(opts.resolution ? { resolution: opts.resolution } : {}),
    }
    const timeoutMs = opts.timeoutMs ?? 30_000
    const answer = new Promise<SyncResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(requestId)
        reject(new SyncFailedError('timeout', `no answer within ${timeoutMs} ms`))
      }, timeoutMs)
      this.#pending.set(requestId, (r) => {
        clearTimeout(timer)
        resolve(r)
      })
    })
    await this.mqtt.publishAsync(topicFor.syncRequest(this.userId), JSON.stringify(request), { qos: 1 })
    const r = await answer
    if ('error' in r) throw new SyncFailedError(r.error, r.detail ?? '')
    return r
  }

  /** Pages through delta sync until the broker says there is no more; yields each page. */
  async *syncPages(opts: SyncOptions = {}): AsyncGenerator<SyncPage> {
    let cursor = opts.cursor
    for (;;) {
      const page = await this.syncPage({ ...opts, ...(cursor ? { cursor } : {}) })
      yield page
      cursor = nextCursor(cursor, page.nextCursor)
      if (!page.more) return
    }
  }

  /** Everything after `cursor`, every page, and the cursor to continue from next time. */
  async sync(opts: SyncOptions = {}): Promise<SyncResult> {
    const out: SyncResult = { readings: [], alerts: [], recommendations: [], cursor: opts.cursor ?? '0', pages: 0 }
    for await (const page of this.syncPages(opts)) {
      out.readings.push(...(page.readings ?? []))
      out.alerts.push(...(page.alerts ?? []))
      out.recommendations.push(...(page.recommendations ?? []))
      out.cursor = nextCursor(out.cursor, page.nextCursor)
      out.pages++
    }
    return out
  }

  async close(): Promise<void> {
    await this.mqtt.endAsync()
  }

  async #subscribe<T>(topic: string, schema: z.ZodType<T>, qos: 0 | 1, handler: Handler<T>): Promise<void> {
    let entry = this.#handlers.get(topic)
    if (!entry) {
      entry = { schema, handlers: [] }
      this.#handlers.set(topic, entry)
    }
    entry.handlers.push(handler as Handler<never>)
    const refused = () => new Error(`subscription to ${topic} refused: not this token's user or role`)
    const granted = await this.mqtt.subscribeAsync(topic, { qos }).catch(() => {
      throw refused()
    })
    if (granted[0]?.qos === 128) throw refused()
  }

  #dispatch(topic: string, payload: Buffer): void {
    let json: unknown
    try {
      json = JSON.parse(payload.toString('utf8'))
    } catch (err) {
      this.onInvalid(topic, err as Error)
      return
    }
    if (topic === topicFor.syncResponse(this.userId)) {
      const r = syncResponseSchema.safeParse(json)
      if (!r.success) {
        this.onInvalid(topic, r.error)
        return
      }
      // A request that did not parse is answered without its requestId: it goes to the oldest one waiting.
      const id = r.data.requestId ?? this.#pending.keys().next().value
      if (id === undefined) return
      this.#pending.get(id)?.(r.data)
      this.#pending.delete(id)
      return
    }
    const entry = this.#handlers.get(topic)
    if (!entry) return
    const parsed = entry.schema.safeParse(json)
    if (!parsed.success) {
      this.onInvalid(topic, parsed.error)
      return
    }
    for (const h of entry.handlers) (h as Handler<unknown>)(parsed.data)
  }
}

/** Connects with the token as the MQTT password; resolves once the broker accepted the connection. */
export async function connectPulsegate(opts: PulsegateClientOptions): Promise<PulsegateClient> {
  const client = await mqtt.connectAsync(opts.url, {
    protocolVersion: 4,
    clientId: opts.clientId ?? `app:${opts.userId}:${globalThis.crypto.randomUUID().slice(0, 12)}`,
    username: 'jwt',
    password: opts.token,
    ...opts.mqtt,
  })
  return new PulsegateClient(client, opts.userId, opts.onInvalid)
}
