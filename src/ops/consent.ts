// Consent per purpose: an append-only, versioned history in `consents` (who changed what, when, through which
// channel), a synchronous in-memory view for the outputs' hot path, and the app's own consent topic.
//
// Purposes and defaults. A purpose never set is not granted (but `medical_alerts`: GRANTED_WHEN_UNSET), with one mapping that keeps today's behaviour: an event's
// public leaderboard is governed by the runner's per-event opt-in at `event join --consent leaderboard`
// (participants.consent_leaderboard, its history here with event_id set and source event-join:<event>), and the
// user-level `leaderboard` purpose is a veto over all events: a runner appears on an event's board when they opted in
// for that event AND have not withdrawn `leaderboard` (never set counts as not withdrawn). Recording the join as a
// user-level grant instead would let opting in for one race show a runner on another they joined without consent.
import { Counter, Registry } from 'prom-client'
import type { Logger } from '../log.js'
import { type Db, isUniqueViolation, type Queryable } from '../store/db.js'
import { isValidId, topicFor } from '../topics/grammar.js'
import type { AuditActor, AuditSink } from './audit-types.js'
import {
  appSource,
  type ConsentChange,
  ConsentError,
  ConsentPayloadError,
  type ConsentRecord,
  type ConsentSource,
  type ConsentState,
  type ConsentStateMessage,
  defaultState,
  GRANTED_WHEN_UNSET,
  parseConsentPayload,
  PURPOSES,
  SOURCE_RE,
  type Purpose,
  type PurposeState,
} from './consent-model.js'

export * from './consent-model.js'

function iso(at: Date | string): string {
  return new Date(at).toISOString()
}

interface StateRow {
  user_id: string
  purpose: Purpose
  granted: boolean
  version: number
  source: string
  at: Date | string
}

const STATE_SQL = `SELECT DISTINCT ON (user_id, purpose) user_id, purpose, granted, version, source, at
  FROM consents WHERE user_id = ANY($1::text[]) AND event_id IS NULL ORDER BY user_id, purpose, version DESC`

// One statement per purpose: the next version is the latest + 1; nothing is appended when the latest already says
// the same (an app re-sending its state adds no history). Writers of one user's consent queue on a transaction-level
// advisory lock (LOCK_SQL); should anything else race them to a version, the unique index
// (consents_user_version_idx) refuses the second and its transaction is retried, then sees the winner's row. `at` is
// the time of the insert (clock_timestamp: after the lock), not of the transaction's start, so it follows versions.
const APPEND_SQL = `WITH prev AS (
    SELECT granted, version FROM consents
    WHERE user_id = $1::text AND purpose = $2::text AND event_id IS NULL ORDER BY version DESC LIMIT 1)
  INSERT INTO consents (user_id, purpose, granted, version, source, at)
  SELECT $1::text, $2::text, $3::boolean, coalesce((SELECT version FROM prev), 0) + 1, $4::text, clock_timestamp()
  WHERE NOT EXISTS (SELECT 1 FROM prev WHERE granted = $3::boolean)
  RETURNING version, at`

/** 0x636f6e73 'cons': the two-key advisory lock space of consent writers, apart from migrate's one-key lock. */
const LOCK_SQL = 'SELECT pg_advisory_xact_lock(1668247155, hashtext($1::text))'

const MAX_ATTEMPTS = 5
/** Users per bulk-load statement. */
const LOAD_CHUNK = 5000

export interface ConsentServiceOptions {
  /** prom-client registry for the consent counters (the broker's); a private one otherwise */
  metrics?: Registry
  log?: Logger
}

function counter(reg: Registry, name: string, help: string, labelNames: string[]): Counter {
  return (reg.getSingleMetric(name) as Counter | undefined) ?? new Counter({ name, help, labelNames, registers: [reg] })
}

export class ConsentService {
  /** userId → purpose → latest user-level state; a user is present once loaded (absent purposes: never set) */
  private readonly cache = new Map<string, Map<Purpose, PurposeState>>()
  private readonly listeners = new Set<(change: ConsentChange) => void>()
  private readonly changes: Counter
  private readonly refusals: Counter
  private readonly log: Logger | undefined

  constructor(
    private readonly db: Db,
    private readonly audit: AuditSink,
    opts: ConsentServiceOptions = {},
  ) {
    const reg = opts.metrics ?? new Registry()
    this.changes = counter(reg, 'pulsegate_consent_changes_total', 'consent changes recorded', ['purpose', 'granted'])
    this.refusals = counter(reg, 'pulsegate_consent_refusals_total', 'consent requests refused', ['reason'])
    this.log = opts.log
  }

  /** Sets one purpose; returns the user's state after it. */
  async set(
    userId: string,
    purpose: Purpose,
    granted: boolean,
    source: ConsentSource,
    actor: AuditActor,
  ): Promise<ConsentState> {
    return (await this.setMany(userId, { [purpose]: granted }, source, actor)).state
  }

  /**
   * Sets several purposes in one transaction (all or none). Unknown users are refused unless `createUser` (an app's
   * token proves its user; the registry may not have met them yet). After the commit the cache answers the new state
   * at once, listeners hear of each change, and each change is audited; a withdrawal stays in force even if the audit
   * sink then fails (the error is passed on).
   */
  async setMany(
    userId: string,
    wanted: Partial<Record<Purpose, boolean>>,
    source: ConsentSource,
    actor: AuditActor,
    opts: { createUser?: boolean } = {},
  ): Promise<{ state: ConsentState; changes: ConsentChange[] }> {
    if (!isValidId(userId)) throw new ConsentError(`invalid user id ${JSON.stringify(userId)}`)
    if (!SOURCE_RE.test(source)) throw new ConsentError(`invalid consent source ${JSON.stringify(source)}`)
    const entries = PURPOSES.filter((p) => wanted[p] !== undefined).map((p) => [p, wanted[p] as boolean] as const)
    for (const [p] of Object.entries(wanted))
      if (!PURPOSES.includes(p as Purpose)) throw new ConsentError(`unknown purpose ${JSON.stringify(p)}`)
    let result: { changes: ConsentChange[]; rows: StateRow[] } | undefined
    for (let attempt = 1; !result; attempt++) {
      try {
        result = await this.db.transaction(async (q) => {
          await q.query(LOCK_SQL, [userId])
          if (opts.createUser) {
            await q.query('INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING', [userId])
          } else if ((await q.query('SELECT 1 FROM users WHERE user_id = $1', [userId])).rows.length === 0) {
            throw new ConsentError(`unknown user ${userId}`)
          }
          const changes: ConsentChange[] = []
          for (const [purpose, granted] of entries) {
            const r = await q.query<{ version: number; at: Date | string }>(APPEND_SQL, [
              userId,
              purpose,
              granted,
              source,
            ])
            const row = r.rows[0]
            if (row) changes.push({ userId, purpose, granted, version: Number(row.version), at: iso(row.at), source })
          }
          const rows = (await q.query<StateRow>(STATE_SQL, [[userId]])).rows
          return { changes, rows }
        })
      } catch (err) {
        if (!isUniqueViolation(err) || attempt >= MAX_ATTEMPTS) throw err
      }
    }
    this.merge([userId], result.rows)
    for (const c of result.changes) {
      this.changes.inc({ purpose: c.purpose, granted: String(c.granted) })
      for (const l of this.listeners) {
        try {
          l(c)
        } catch (err) {
          this.log?.error({ err: (err as Error).message, userId, purpose: c.purpose }, 'consent listener failed')
        }
      }
    }
    for (const c of result.changes) {
      await this.audit.record({
        actor,
        action: 'consent.change',
        subject: userId,
        purpose: c.purpose,
        details: { granted: c.granted, version: c.version, source: c.source },
      })
    }
    return { state: this.cachedState(userId), changes: result.changes }
  }

  /** The user's current state for all five purposes, read from the database (and cached). */
  async state(userId: string): Promise<ConsentState> {
    const rows = (await this.db.query<StateRow>(STATE_SQL, [[userId]])).rows
    this.merge([userId], rows)
    return this.cachedState(userId)
  }

  /** Every change recorded for the user in the order recorded, event-scoped leaderboard opt-ins included. */
  async history(userId: string): Promise<ConsentRecord[]> {
    const res = await this.db.query<{
      purpose: Purpose
      event_id: string | null
      granted: boolean
      version: number
      source: string
      at: Date | string
    }>('SELECT purpose, event_id, granted, version, source, at FROM consents WHERE user_id = $1 ORDER BY id', [userId])
    return res.rows.map((r) => ({
      purpose: r.purpose,
      eventId: r.event_id,
      granted: r.granted,
      version: Number(r.version),
      source: r.source,
      at: iso(r.at),
    }))
  }

  /**
   * Loads (or refreshes) users' states into the cache in a few statements: the output engine calls it for the users
   * it is about to serve. A concurrent set() is never overwritten by an older read (higher version wins).
   */
  async load(userIds: readonly string[]): Promise<void> {
    const ids = [...new Set(userIds)]
    for (let i = 0; i < ids.length; i += LOAD_CHUNK) {
      const chunk = ids.slice(i, i + LOAD_CHUNK)
      this.merge(chunk, (await this.db.query<StateRow>(STATE_SQL, [chunk])).rows)
    }
  }

  /**
   * A change written elsewhere (another broker, the CLI against the database), told by the control plane
   * (src/cluster/control-plane.ts): the users are read again and every purpose whose state moved goes to the listeners,
   * as a change through this service would. A hint naming a version the cache already holds is skipped (this process
   * wrote it); one without a purpose re-reads the user (a flush: notifications may have been missed). Returns the
   * changed users' state messages (to publish, retained, on their consent/state topic).
   */
  async refresh(
    hints: readonly { userId: string; purpose?: Purpose; version?: number }[],
  ): Promise<Map<string, ConsentStateMessage>> {
    const stale = new Set<string>()
    for (const h of hints) {
      const cur = h.purpose !== undefined ? this.cache.get(h.userId)?.get(h.purpose) : undefined
      if (cur && h.version !== undefined && cur.version >= h.version) continue
      stale.add(h.userId)
    }
    const ids = [...stale]
    const before = new Map(ids.map((id) => [id, this.cache.has(id) ? this.cachedState(id) : null]))
    await this.load(ids)
    const out = new Map<string, ConsentStateMessage>()
    for (const id of ids) {
      const was = before.get(id) ?? null
      const now = this.cachedState(id)
      for (const p of PURPOSES) {
        if (was && was[p].version === now[p].version) continue
        // Unknown before: only the hinted purposes (and a set one) are news; an unset default is no change.
        if (!was && now[p].version === 0 && !hints.some((h) => h.userId === id && h.purpose === p)) continue
        out.set(id, this.stateMessage(id, now))
        const c: ConsentChange = {
          userId: id,
          purpose: p,
          granted: now[p].granted,
          version: now[p].version,
          at: now[p].at ?? new Date().toISOString(),
          source: now[p].source ?? 'peer',
        }
        for (const l of this.listeners) {
          try {
            l(c)
          } catch (err) {
            this.log?.error({ err: (err as Error).message, userId: id, purpose: p }, 'consent listener failed')
          }
        }
      }
    }
    return out
  }

  /** Users in the cache (the control plane re-reads them all after it may have missed notifications). */
  cachedUsers(): string[] {
    return [...this.cache.keys()]
  }

  isLoaded(userId: string): boolean {
    return this.cache.has(userId)
  }

  /**
   * Synchronous check for the hot path: is the purpose granted? A user not loaded is treated as not consenting (fail
   * closed), so load() the users first.
   */
  allows(userId: string, purpose: Purpose): boolean {
    const m = this.cache.get(userId)
    if (!m) return false
    return m.get(purpose)?.granted ?? GRANTED_WHEN_UNSET[purpose]
  }

  /** May this runner appear on an event's public leaderboard? Their per-event opt-in, unless withdrawn (see top). */
  leaderboardVisible(userId: string, participantOptIn: boolean): boolean {
    if (!participantOptIn) return false
    const m = this.cache.get(userId)
    if (!m) return false
    const s = m.get('leaderboard')
    return s === undefined || s.granted
  }

  /** Listeners hear of every change made through this service, right after its commit; returns an unsubscribe. */
  onChange(listener: (change: ConsentChange) => void): () => void {
    this.listeners.add(listener)
    return () => this.listeners.delete(listener)
  }

  /** Drops users from the cache (erasure; a peer node's change: load() again to refresh instead). */
  forget(userIds: readonly string[]): void {
    for (const id of userIds) this.cache.delete(id)
  }

  stateMessage(userId: string, state: ConsentState): ConsentStateMessage {
    const consents = {} as Record<Purpose, boolean>
    let version = 0
    for (const p of PURPOSES) {
      consents[p] = state[p].granted
      version += state[p].version
    }
    return { userId, consents, version }
  }

  /**
   * An app's publish on users/{uid}/consent: `{"purpose":"research","granted":true}` or
   * `{"consents":{"research":true,…}}`. A bad payload is refused with a ConsentPayloadError (counted) and stores
   * nothing. Returns the message to publish, retained, on users/{uid}/consent/state (consentStateTopic).
   */
  async handleAppPublish(userId: string, payload: Buffer | string, clientId: string): Promise<ConsentStateMessage> {
    let wanted: Partial<Record<Purpose, boolean>>
    try {
      wanted = parseConsentPayload(payload)
    } catch (err) {
      if (err instanceof ConsentPayloadError) this.refusals.inc({ reason: err.reason })
      throw err
    }
    const { state } = await this.setMany(
      userId,
      wanted,
      appSource(clientId),
      { role: 'app', id: userId },
      { createUser: true },
    )
    return this.stateMessage(userId, state)
  }

  private merge(userIds: readonly string[], rows: readonly StateRow[]): void {
    for (const id of userIds) if (!this.cache.has(id)) this.cache.set(id, new Map())
    for (const r of rows) {
      const m = this.cache.get(r.user_id) as Map<Purpose, PurposeState>
      const cur = m.get(r.purpose)
      const version = Number(r.version)
      if (cur && cur.version >= version) continue
      m.set(r.purpose, { granted: r.granted, version, at: iso(r.at), source: r.source })
    }
  }

  private cachedState(userId: string): ConsentState {
    const s = defaultState()
    for (const [p, v] of this.cache.get(userId) ?? []) s[p] = { ...v }
    return s
  }
}

export const consentStateTopic = (userId: string): string => topicFor.consentState(userId)

/** Queues behind (or holds off) this user's consent writers; the erasure takes it before it locks the user's row. */
export async function lockConsentWriters(q: Queryable, userId: string): Promise<void> {
  await q.query(LOCK_SQL, [userId])
}

/**
 * For erasure, inside its transaction: deletes every consent row of the user and appends one tombstone without any
 * id (source 'erasure'). The append-only trigger lets DELETE through only while `pulsegate.erasure` is on, which is
 * set for this statement alone (transaction-local, switched off again right after). Returns the rows deleted.
 * Call ConsentService.forget() after the commit.
 */
export async function eraseConsentRows(q: Queryable, userId: string): Promise<number> {
  await q.query(`SELECT set_config('pulsegate.erasure', 'on', true)`)
  const del = await q.query('DELETE FROM consents WHERE user_id = $1', [userId])
  await q.query(`SELECT set_config('pulsegate.erasure', 'off', true)`)
  await q.query(`INSERT INTO consents (source) VALUES ('erasure')`)
  return del.rowCount
}
