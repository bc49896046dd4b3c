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

export interface Db extends Queryable {
  readonly kind: 'postgres' | 'embedded'
  /** statements that may run at once: the pg pool size, 1 for the embedded store */
  readonly maxConcurrency: number
  /** fn runs on one connection inside BEGIN … COMMIT (ROLLBACK on throw) */
  transaction<T>(fn: (q: Queryable) => Promise<T>): Promise<T>
  /** statements that cannot run in a transaction block (continuous aggregates) */
  exec(sql: string): Promise<void>
  close(): Promise<void>
}

/** Errors that mean "the database is not reachable right now", as opposed to a bad statement. */
export function isConnectionError(err: unknown): boolean {
  const e = err as { code?: string; message?: string } | null
  if (!e) return false
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
