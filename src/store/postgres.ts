// A PostgreSQL or TimescaleDB server through a pg pool.
import pg from 'pg'
import type { Logger } from '../log.js'
import type { Db, Queryable, QueryResult } from './db.js'
import { type LaneOptions, withLanes } from './lanes.js'

export function openPostgres(url: string, poolSize: number, log: Logger, lanes: LaneOptions = {}): Db {
  const pool = new pg.Pool({
    connectionString: url,
    max: poolSize,
    // Fail fast when the server is gone so callers can back off and retry instead of piling up. Under load callers
    // wait in the lanes (withLanes never admits more than `max`), so this only fires when connecting itself stalls.
    connectionTimeoutMillis: 3000,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    application_name: 'pulsegate',
  })
  // An idle client losing its server emits here; without a listener it would crash the process.
  pool.on('error', (err) => log.warn({ err: err.message }, 'postgres idle client error'))
  const query = async <R>(sql: string, params?: unknown[]): Promise<QueryResult<R>> => {
    const res = await pool.query(sql, params as unknown[] | undefined)
    return { rows: res.rows as R[], rowCount: res.rowCount ?? 0 }
  }
  return withLanes(
    {
      kind: 'postgres',
      maxConcurrency: poolSize,
      query,
      async exec(sql) {
        await pool.query(sql)
      },
      async transaction(fn) {
        const client = await pool.connect()
        try {
          await client.query('BEGIN')
          const q: Queryable = {
            async query<R>(sql: string, params?: unknown[]) {
              const res = await client.query(sql, params as unknown[] | undefined)
              return { rows: res.rows as R[], rowCount: res.rowCount ?? 0 }
            },
          }
          const out = await fn(q)
          await client.query('COMMIT')
          return out
        } catch (err) {
          await client.query('ROLLBACK').catch(() => {})
          throw err
        } finally {
          client.release()
        }
      },
      async close() {
        await pool.end()
      },
    },
    lanes,
  )
}
