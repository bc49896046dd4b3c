// The one SQL path. The pipeline and the registry speak SQL to a `Db`; whether that is a PostgreSQL/TimescaleDB
// server (pg) or the embedded TimescaleDB in process (PGlite) is decided once, at start.
export interface QueryResult<R> {
  rows: R[]
  /** rows inserted/updated/deleted by the statement */
  rowCount: number
}

export interface Queryable {
  query<R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<R>>
}

/** Admission lanes in front of the connections, highest priority first (src/store/lanes.ts, docs/limits.md). */
export const LANES = ['commit', 'identity', 'outputs', 'sync', 'background'] as const
export type LaneName = (typeof LANES)[number]

/** A lane's queue or wait bound was exceeded: the database is too busy right now, retry later (not a bad statement). */
export class DbOverloadError extends Error {
  readonly code = 'PULSEGATE_DB_OVERLOAD'
  constructor(
    readonly lane: LaneName,
    readonly reason: 'queue_full' | 'wait_timeout',
    detail: string,
  ) {
    super(`database busy: lane ${lane} ${reason === 'queue_full' ? 'queue full' : 'wait exceeded'} (${detail})`)
    this.name = 'DbOverloadError'
  }
}

export interface Db extends Queryable {
  readonly kind: 'postgres' | 'embedded'
  /** statements worth having in flight at once: the pg pool size; 2 for the embedded store on its thread (one runs, one
   *  waits queued there), 1 with PGlite on the calling thread */
  readonly maxConcurrency: number
  /** fn runs on one connection inside BEGIN … COMMIT (ROLLBACK on throw) */
  transaction<T>(fn: (q: Queryable) => Promise<T>): Promise<T>
  /** statements that cannot run in a transaction block (continuous aggregates) */
  exec(sql: string): Promise<void>
  close(): Promise<void>
  /** the same store with its statements and transactions admitted in `name`'s lane */
  lane(name: LaneName): Db
}

/** SQLSTATE 23505: a row with that key is there already */
export function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === '23505'
}

/** deadlock_detected, serialization_failure: the statement was cancelled for another's sake and can simply run again */
export function isTransientConflict(err: unknown): boolean {
  const code = (err as { code?: string } | null)?.code
  return code === '40P01' || code === '40001'
}

/** Errors that mean "the database is not reachable right now", as opposed to a bad statement. */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | null
  if (!e) return false
  // Refused by the admission gate: the caller's unavailable path (CONNACK 3, commit back-off) is the right answer.
  if (err instanceof DbOverloadError) return true
  const code = e.code ?? ''
  if (
    [
      'ECONNREFUSED',
      'ECONNRESET',
      'ETIMEDOUT',
      'EPIPE',
      'ENOTFOUND',
      '57P01',
      '57P02',
      '57P03',
      '08000',
      '08003',
      '08006',
      '08001',
      '08004',
    ].includes(code)
  )
    return true
  return /terminat|Connection terminated|not queryable|timeout|closed/i.test(e.message ?? '')
}
