// Erasure (GDPR Art. 17): every trace of one person, nothing of anyone else. docs/privacy.md "Erasure" is the
// operator's account; what holds data is ERASURE_PLAN (erasure-plan.ts). The order matters:
//   1. refuse: from now on nothing of theirs is accepted (ErasureGuard in a broker), their certificates are revoked
//      (committed at once, so other processes refuse them too) and their open sessions are cut;
//   2. drain: wait until nothing of theirs is on its way to the database (the group-commit writer's barrier, the
//      ingest stage's direct writes, the output engine's work: an alert being written) and drop it from memory;
//   3. delete: one transaction over the plan, telemetry one device key at a time;
//   4. clear: leaderboard entries (the boards are republished), retained messages, persistent sessions and their
//      queued messages, caches;
//   5. record the erasure in the audit log (counts per table, the pseudonym as subject).
// A broker does 1–4 live (LiveEraser, erase-live.ts); offline (the CLI against the database, no broker) steps 1 and 3
// run alone and the report says what could not be reached. Idempotent: a second run finds nothing and counts zeros,
// and an unknown user is not an error.
import type { Logger } from '../log.js'
import type { LeaderboardStore } from '../outputs/leaderboard.js'
import type { Db, Queryable } from '../store/db.js'
import type { AuditActor, AuditSink } from './audit-types.js'
import { eraseConsentRows, lockConsentWriters } from './consent.js'
import {
  CAGG_SQL,
  COMPRESSED_CHUNKS_SQL,
  ERASURE_PLAN,
  type ErasedDevice,
  type Finder,
  SEGMENT_BY_DEVICE_SQL,
  whereOf,
} from './erasure-plan.js'

export type { ErasedDevice } from './erasure-plan.js'

/** What a broker cleared beyond the database. */
export interface LiveCounts {
  /** connected clients of the person (devices, apps, bridges) disconnected */
  sessionsCut: number
  /** stored (clean: false) sessions of the person removed */
  persistentSessions: number
  /** QoS 1 messages about the person removed from stored sessions' queues (theirs and others') */
  queuedMessages: number
  /** retained messages on the person's and their devices' topics cleared */
  retainedCleared: number
}

export interface ErasureReport {
  userId: string
  /** false: nobody by that id was in the database (unknown, or erased before): every count is 0 */
  found: boolean
  /** rows per table (continuous aggregates by view name); revoked_certs: rows whose device id was detached */
  tables: Record<string, number>
  /** tables of the plan this database does not have (another feature's migration, or no TimescaleDB) */
  skipped: string[]
  /** device certificates refused from now on (their fingerprints, without any id, in revoked_certs) */
  certificates: number
  /** leaderboard entries removed (a broker's board, or Redis when the CLI has it configured) */
  leaderboardEntries: number
  /** null when no broker was reached (offline) */
  live: LiveCounts | null
  warnings: string[]
  ms: number
}

export type ErasureStage = 'refusing' | 'draining' | 'deleting' | 'clearing' | 'recording'

/** A broker's part (erase-live.ts). */
export interface LiveEraser {
  /** step 1, synchronous: nothing of the user or these devices is accepted from here on */
  refuse(userId: string, devices: readonly ErasedDevice[]): void
  /** step 1: disconnects the user's clients; returns how many */
  cut(userId: string, devices: readonly ErasedDevice[]): number
  /** step 2: resolves once nothing of theirs is in flight, and what memory held of them is gone */
  drain(userId: string, devices: readonly ErasedDevice[]): Promise<void>
  /** step 4 */
  clear(userId: string, devices: readonly ErasedDevice[], eventIds: readonly string[]): Promise<LiveCounts>
  /** the user's leaderboard entries in these events; returns how many boards held one */
  removeFromBoards(userId: string, eventIds: readonly string[]): Promise<number>
  /** after the erasure, done or failed */
  end(userId: string, devices: readonly ErasedDevice[]): void
}

export interface EraseOptions {
  audit: AuditSink
  actor: AuditActor
  /** a broker's live side; absent offline */
  live?: LiveEraser
  /** offline: a leaderboard store to take the user off (Redis, when configured) */
  leaderboard?: Pick<LeaderboardStore, 'remove'>
  /** progress, awaited: the CLI prints it, tests act at a stage */
  onStage?: (stage: ErasureStage) => void | Promise<void>
  /** step 2 gives up after this long (the database is down): nothing is deleted, the erasure can be run again */
  drainTimeoutMs?: number
  log?: Logger
}

export class ErasureError extends Error {}

/** The erasure ran to the end but its audit record failed: the report says what was erased. */
export class ErasureAuditError extends ErasureError {
  constructor(
    readonly report: ErasureReport,
    cause: Error,
  ) {
    super(`erased, but the audit record failed: ${cause.message}`)
  }
}

/** Two-key advisory lock space 'eras': two erasures of one person queue instead of interleaving. */
const LOCK_SQL = 'SELECT pg_advisory_xact_lock(1701994867, hashtext($1::text))'
/** A device registered to the person while step 1 ran: step 1 is done again with it, this many times at most. */
const MAX_ATTEMPTS = 3

class DevicesChanged extends Error {
  constructor(readonly devices: ErasedDevice[]) {
    super('devices registered to the user during the erasure')
  }
}

async function devicesOf(q: Queryable, userId: string): Promise<ErasedDevice[]> {
  const res = await q.query<{ device_key: number; device_id: string; cert_fingerprint: string | null }>(
    'SELECT device_key, device_id, cert_fingerprint FROM devices WHERE user_id = $1 ORDER BY device_key',
    [userId],
  )
  return res.rows.map((r) => ({
    deviceKey: Number(r.device_key),
    deviceId: r.device_id,
    fingerprint: r.cert_fingerprint,
  }))
}

/** Step 1 in the database, committed at once: the certificates are refused by every process from now on. */
async function refuseCertificates(db: Db, userId: string, devices: readonly ErasedDevice[]): Promise<number> {
  const fps = [...new Set(devices.flatMap((d) => (d.fingerprint ? [d.fingerprint] : [])))]
  await db.transaction(async (q) => {
    if (fps.length > 0)
      await q.query(
        `INSERT INTO revoked_certs (fingerprint, device_id) SELECT unnest($1::text[]), NULL
         ON CONFLICT (fingerprint) DO UPDATE SET device_id = NULL`,
        [fps],
      )
    await q.query('UPDATE devices SET revoked_at = coalesce(revoked_at, now()) WHERE user_id = $1', [userId])
  })
  return fps.length
}

const ident = (schema: string, name: string) => `"${schema.replace(/"/g, '""')}"."${name.replace(/"/g, '""')}"`

/**
 * A hypertable's rows of these devices, one device key at a time. On TimescaleDB the compressed batches of a device
 * (segmented by device_key) are deleted in the compressed chunks themselves, whole, without decompression (see
 * COMPRESSED_CHUNKS_SQL); the DELETE through the hypertable then meets only uncompressed rows. Without segmentation
 * by device the DELETE has to decompress the batches it touches, with TimescaleDB's per-transaction limit lifted.
 */
async function erasePerDevice(
  q: Queryable,
  schema: string,
  table: string,
  devices: readonly ErasedDevice[],
  timescale: boolean,
): Promise<number> {
  let chunks: string[] = []
  if (timescale) {
    const segmented = (await q.query<{ segmented: boolean }>(SEGMENT_BY_DEVICE_SQL, [schema, table])).rows[0]
    if (segmented?.segmented)
      chunks = (await q.query<{ chunk: string }>(COMPRESSED_CHUNKS_SQL, [schema, table])).rows.map((r) => r.chunk)
    await q.query(`SELECT set_config('timescaledb.max_tuples_decompressed_per_dml_transaction', '0', true)`)
  }
  let n = 0
  for (const d of devices) {
    for (const chunk of chunks) {
      const r = await q.query<{ n: number }>(
        `WITH d AS (DELETE FROM ${chunk} WHERE device_key = $1 RETURNING _ts_meta_count)
         SELECT coalesce(sum(_ts_meta_count), 0)::int AS n FROM d`,
        [d.deviceKey],
      )
      n += Number(r.rows[0]?.n ?? 0)
    }
    n += (await q.query(`DELETE FROM ${ident(schema, table)} WHERE device_key = $1`, [d.deviceKey])).rowCount
  }
  return n
}

interface Deleted {
  found: boolean
  tables: Record<string, number>
  skipped: string[]
}

/** Step 3: the whole plan in the caller's transaction. */
async function deleteRows(q: Queryable, userId: string, expected: readonly ErasedDevice[]): Promise<Deleted> {
  await q.query(LOCK_SQL, [userId])
  // Before the user's row: a consent writer holding its lock may be about to touch that row.
  await lockConsentWriters(q, userId)
  const found = (await q.query('SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE', [userId])).rows.length > 0
  // With the row locked, no device can be registered to the user until the commit (devices.user_id → users).
  const now = await devicesOf(q, userId)
  const known = new Set(expected.map((d) => d.deviceKey))
  if (now.some((d) => !known.has(d.deviceKey)))
    throw new DevicesChanged([...expected, ...now.filter((d) => !known.has(d.deviceKey))])
  const devices = expected
  const present = new Set(
    (
      await q.query<{ t: string }>(
        'SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass(quote_ident(t)) IS NOT NULL',
        [ERASURE_PLAN.map((e) => e.table)],
      )
    ).rows.map((r) => r.t),
  )
  const timescale =
    (await q.query<{ t: string | null }>(`SELECT to_regclass('_timescaledb_catalog.chunk')::text AS t`)).rows[0]?.t !=
    null
  const tables: Record<string, number> = {}
  const skipped: string[] = []
  for (const e of ERASURE_PLAN) {
    if (!present.has(e.table)) {
      if (!e.optional) throw new ErasureError(`table ${e.table} is missing: run pulsegate migrate`)
      skipped.push(e.table)
      continue
    }
    const { where, params } = whereOf(e.by, userId, devices)
    switch (e.action) {
      case 'per-device':
        tables[e.table] = await erasePerDevice(q, 'public', e.table, devices, timescale)
        break
      case 'delete':
        tables[e.table] = (await q.query(`DELETE FROM ${e.table} WHERE ${where}`, params)).rowCount
        break
      case 'detach':
        tables[e.table] = (await q.query(`UPDATE ${e.table} SET device_id = NULL WHERE ${where}`, params)).rowCount
        break
      case 'consent': {
        // Only when there is something: a tombstone for nobody would make a second run differ from the first.
        const any = await q.query('SELECT 1 FROM consents WHERE user_id = $1 LIMIT 1', [userId])
        tables[e.table] = any.rows.length > 0 ? await eraseConsentRows(q, userId) : 0
        break
      }
    }
  }
  if (timescale) {
    // Continuous aggregates: the person's rows in each one's materialisation, by the columns it carries.
    const caggs = await q.query<{ view: string; schema: string; name: string; finders: string | null }>(CAGG_SQL)
    for (const c of caggs.rows) {
      const finders = (c.finders ?? '').split(',').filter(Boolean) as Finder[]
      let n = 0
      if (finders.includes('device_key')) n += await erasePerDevice(q, c.schema, c.name, devices, true)
      const rest = finders.filter((f) => f !== 'device_key')
      if (rest.length > 0) {
        const { where, params } = whereOf(rest, userId, devices)
        n += (await q.query(`DELETE FROM ${ident(c.schema, c.name)} WHERE ${where}`, params)).rowCount
      }
      if (finders.length > 0) tables[c.view] = n
    }
  }
  return { found, tables, skipped }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new ErasureError(message)), ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}

export async function eraseUser(db: Db, userId: string, opts: EraseOptions): Promise<ErasureReport> {
  const started = performance.now()
  const { live } = opts
  const stage = async (s: ErasureStage) => {
    await opts.onStage?.(s)
  }
  let devices = await devicesOf(db, userId)
  const eventIds = (
    await db.query<{ event_id: string }>('SELECT DISTINCT event_id FROM participants WHERE user_id = $1', [userId])
  ).rows.map((r) => r.event_id)
  const warnings: string[] = []
  let deleted: Deleted | undefined
  let certificates = 0
  let leaderboardEntries = 0
  let liveCounts: LiveCounts | null = null
  let sessionsCut = 0
  try {
    for (let attempt = 1; !deleted; attempt++) {
      live?.refuse(userId, devices)
      await stage('refusing')
      certificates = await refuseCertificates(db, userId, devices)
      if (live) sessionsCut += live.cut(userId, devices)
      await stage('draining')
      if (live)
        await withTimeout(
          live.drain(userId, devices),
          opts.drainTimeoutMs ?? 30_000,
          'readings of the user still on their way to the database (is it reachable?): nothing deleted; run the erasure again',
        )
      await stage('deleting')
      try {
        deleted = await db.transaction((q) => deleteRows(q, userId, devices))
      } catch (err) {
        if (!(err instanceof DevicesChanged) || attempt >= MAX_ATTEMPTS) throw err
        devices = err.devices
      }
    }
    await stage('clearing')
    if (live) {
      leaderboardEntries = await live.removeFromBoards(userId, eventIds)
      liveCounts = await live.clear(userId, devices, eventIds)
      liveCounts.sessionsCut = sessionsCut
    } else {
      warnings.push(
        'no broker was reached: brokers listening on this PostgreSQL (the control plane) cut the sessions and clear their memory when they hear of the deletion; one that is not (the embedded store, control.listen off, a broker down meanwhile) keeps its sessions, retained messages and stored sessions until it disconnects them (its devices are refused when they next connect); run the erasure through a broker (--broker) to have its live report',
      )
      if (opts.leaderboard) {
        for (const e of eventIds) if (await opts.leaderboard.remove(e, userId)) leaderboardEntries++
      } else if (eventIds.length > 0) {
        warnings.push('leaderboard entries were not removed: no broker and no Redis reached')
      }
    }
  } finally {
    live?.end(userId, devices)
  }
  const done = deleted as Deleted
  const report: ErasureReport = {
    userId,
    found: done.found,
    tables: done.tables,
    skipped: done.skipped,
    certificates,
    leaderboardEntries,
    live: liveCounts,
    warnings,
    ms: Math.round(performance.now() - started),
  }
  await stage('recording')
  try {
    // Counts only: no device id (an operator may have named a device after its wearer), no name.
    await opts.audit.record({
      actor: opts.actor,
      action: 'erasure',
      subject: userId,
      purpose: 'erasure',
      details: {
        found: report.found,
        tables: report.tables,
        certificates,
        leaderboardEntries,
        live: liveCounts,
      },
    })
  } catch (err) {
    throw new ErasureAuditError(report, err as Error)
  }
  opts.log?.info({ userId, ms: report.ms, found: report.found }, 'erasure done')
  return report
}
