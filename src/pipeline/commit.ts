// Group commit: samples from many connections are gathered for a few milliseconds (or until a size cap) and written
// with one INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING per table. Every waiting QoS 1 batch is released
// only when the statement that carried its rows has committed. The queue is bounded; a failed statement is retried
// with backoff until the database comes back, so nothing accepted is ever dropped here.
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { type Db, isConnectionError } from '../store/db.js'
import type { PositionSample, ScalarSample } from './types.js'

export interface WriterOptions {
  maxBatchRows: number
  flushIntervalMs: number
  maxQueuedRows: number
  writers: number
}

export interface CommitOutcome {
  /** rows of this flush that were new (the rest were duplicates of stored rows) */
  inserted: number
  rows: number
}

/** A batch the database itself refused (not a connectivity problem): it is retried alone, then reported. */
export class StoreRejectedError extends Error {}
export class QueueFullError extends Error {}
export class WriterClosedError extends Error {}

interface Waiter {
  resolve(o: CommitOutcome): void
  reject(e: Error): void
  enqueuedAt: number
}

/** One flush worth of rows in column form: what unnest() wants, with no per-row objects. */
class Columns {
  sTime: number[] = []
  sDev: number[] = []
  sMetric: number[] = []
  sValue: number[] = []
  pTime: number[] = []
  pDev: number[] = []
  pLat: number[] = []
  pLon: number[] = []
  pAlt: (number | null)[] = []
  pAcc: (number | null)[] = []
  waiters: Waiter[] = []
  /** where each waiter's rows sit, so a refused flush can be split by batch */
  spans: Span[] = []
  get rows(): number {
    return this.sTime.length + this.pTime.length
  }
  add(deviceKey: number, scalars: readonly ScalarSample[], positions: readonly PositionSample[], waiter: Waiter): void {
    const s0 = this.sTime.length
    const p0 = this.pTime.length
    for (const s of scalars) {
      this.sTime.push(s.t)
      this.sDev.push(deviceKey)
      this.sMetric.push(s.metric)
      this.sValue.push(s.value)
    }
    for (const p of positions) {
      this.pTime.push(p.t)
      this.pDev.push(deviceKey)
      this.pLat.push(p.lat)
      this.pLon.push(p.lon)
      this.pAlt.push(p.alt)
      this.pAcc.push(p.acc)
    }
    this.spans.push({ s0, s1: this.sTime.length, p0, p1: this.pTime.length })
    this.waiters.push(waiter)
  }
}

// to_timestamp(float8) rounds to the microsecond, so integer epoch milliseconds map to exactly one timestamptz.
export const INSERT_SAMPLES = `INSERT INTO samples (time, device_key, metric, value)
  SELECT to_timestamp(t / 1000.0), d, m, v FROM unnest($1::float8[], $2::int4[], $3::int2[], $4::float8[]) AS u(t, d, m, v)
  ON CONFLICT DO NOTHING`
export const INSERT_POSITIONS = `INSERT INTO positions (time, device_key, lat, lon, alt, acc)
  SELECT to_timestamp(t / 1000.0), d, la, lo, al, ac
  FROM unnest($1::float8[], $2::int4[], $3::float8[], $4::float8[], $5::float4[], $6::float4[]) AS u(t, d, la, lo, al, ac)
  ON CONFLICT DO NOTHING`

// Without ON CONFLICT: PostgreSQL's speculative insertion for ON CONFLICT costs ~45 % more per row (4.5 vs 8 µs/row at
// 10k-row statements here), and duplicates that reach the database are rare (the seq window answers redeliveries).
// A plain statement that hits the unique key fails whole and is re-run with ON CONFLICT (see write()).
const PLAIN_SAMPLES = INSERT_SAMPLES.replace(/\s*ON CONFLICT DO NOTHING$/, '')
const PLAIN_POSITIONS = INSERT_POSITIONS.replace(/\s*ON CONFLICT DO NOTHING$/, '')
/** after a unique violation, statements carry ON CONFLICT for this long (a re-upload usually comes in a burst) */
const CONFLICT_MODE_MS = 30_000

function isUniqueViolation(err: unknown): boolean {
  return (err as { code?: string } | null)?.code === '23505'
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/**
 * A PostgreSQL array literal of validated finite numbers. pg's own serializer quotes and regex-escapes every element
 * (two replaces each, 100k+ per flush at race-day rates); numbers need neither, and JS prints the shortest
 * round-trip form, which float8 parses back exactly.
 */
export function numericArrayLiteral(xs: readonly (number | null)[]): string {
  // Array#join is native and several times faster than building the string element by element.
  const body = xs.includes(null) ? xs.map((x) => (x === null ? 'NULL' : x)).join(',') : xs.join(',')
  return `{${body}}`
}

export class GroupCommitWriter {
  private current = new Columns()
  private readonly ready: Columns[] = []
  private queued = 0
  private inflight = 0
  private timer: NodeJS.Timeout | null = null
  /** until when statements carry ON CONFLICT DO NOTHING (performance.now() ms; 0: plain INSERTs) */
  private conflictModeUntil = 0
  private closed = false
  private readonly writers: number
  private drainWaiters: (() => void)[] = []
  /** flushes being written, and the barriers waiting for some of them */
  private readonly flying = new Set<Columns>()
  private barriers: { waiting: Set<Columns>; resolve(): void }[] = []
  /** true while the last statement failed for connectivity: readiness reports it */
  healthy = true

  constructor(
    private readonly db: Db,
    private readonly opts: WriterOptions,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.writers = Math.max(1, Math.min(opts.writers, db.maxConcurrency))
  }

  get queuedRows(): number {
    return this.queued
  }

  /** Age of the oldest batch waiting for its commit (0: none): a stalled database settles nothing (limits/brownout). */
  get oldestWaitingMs(): number {
    const now = performance.now()
    const cols = [this.current, ...this.ready, ...this.flying]
    return now - Math.min(now, ...cols.map((c) => c.waiters[0]?.enqueuedAt ?? now))
  }

  /** Room for `rows` more rows? Callers check before decoding work is wasted on a full queue. */
  hasRoom(rows: number): boolean {
    return this.queued + rows <= this.opts.maxQueuedRows
  }

  /**
   * Queues rows; the promise settles when they are committed. Throws QueueFullError synchronously when the bounded
   * queue has no room (QoS 1: refuse unacked, the device retries; QoS 0: drop and count).
   */
  submit(
    deviceKey: number,
    scalars: readonly ScalarSample[],
    positions: readonly PositionSample[],
  ): Promise<CommitOutcome> {
    if (this.closed) throw new WriterClosedError('writer is shutting down')
    const rows = scalars.length + positions.length
    if (!this.hasRoom(rows)) throw new QueueFullError(`ingest queue full (${this.queued} rows waiting)`)
    return new Promise<CommitOutcome>((resolve, reject) => {
      const c = this.current
      c.add(deviceKey, scalars, positions, { resolve, reject, enqueuedAt: performance.now() })
      this.queued += rows
      this.metrics.queueDepth.set(this.queued)
      if (c.rows >= this.opts.maxBatchRows) this.seal()
      else if (!this.timer) this.timer = setTimeout(this.onTimer, this.opts.flushIntervalMs)
      this.pump()
    })
  }

  /**
   * The flush timer seals only when a writer is free. With every writer busy, rows keep gathering and the writer that
   * frees up first takes them all (pump's finally): sealing small batches into a queue would make a slowdown permanent.
   */
  private readonly onTimer = (): void => {
    this.timer = null
    if (this.inflight < this.writers) this.seal()
  }

  private seal(): void {
    if (this.timer) {
      clearTimeout(this.timer)
      this.timer = null
    }
    if (this.current.rows === 0) return
    this.ready.push(this.current)
    this.current = new Columns()
    this.pump()
  }

  private pump(): void {
    // While every writer is busy, rows keep gathering in `current`: under load, batches grow on their own.
    while (this.inflight < this.writers && this.ready.length > 0) {
      const cols = this.ready.shift() as Columns
      this.inflight++
      this.flying.add(cols)
      this.metrics.inflight.set(this.inflight)
      void this.flush(cols).finally(() => {
        this.inflight--
        this.flying.delete(cols)
        this.passBarriers(cols)
        this.metrics.inflight.set(this.inflight)
        if (this.ready.length === 0 && this.inflight < this.writers && this.current.rows > 0 && !this.timer) this.seal()
        this.pump()
        this.checkDrained()
      })
    }
  }

  /**
   * One statement per table. Each statement commits on its own: when the positions statement fails after the samples
   * one committed, the retry re-inserts the samples, and the unique key makes that a no-op (counted as duplicates).
   */
  private async write(cols: Columns): Promise<number> {
    const started = performance.now()
    let inserted = 0
    if (cols.sTime.length > 0) {
      const n = await this.insert(
        INSERT_SAMPLES,
        PLAIN_SAMPLES,
        [cols.sTime, cols.sDev, cols.sMetric, cols.sValue].map(numericArrayLiteral),
        cols.sTime.length,
      )
      inserted += n
      this.metrics.rowsCommitted.inc({ table: 'samples' }, n)
    }
    if (cols.pTime.length > 0) {
      const n = await this.insert(
        INSERT_POSITIONS,
        PLAIN_POSITIONS,
        [cols.pTime, cols.pDev, cols.pLat, cols.pLon, cols.pAlt, cols.pAcc],
        cols.pTime.length,
      )
      inserted += n
      this.metrics.rowsCommitted.inc({ table: 'positions' }, n)
    }
    this.metrics.statementLatency.observe((performance.now() - started) / 1000)
    return inserted
  }

  /** Plain INSERT while no duplicates are around; after a unique violation, the same rows with ON CONFLICT. */
  private async insert(upsert: string, plain: string, params: unknown[], rows: number): Promise<number> {
    if (performance.now() >= this.conflictModeUntil) {
      try {
        return (await this.db.query(plain, params)).rowCount
      } catch (err) {
        if (!isUniqueViolation(err)) throw err
        // The failed statement wrote nothing (it is atomic): write the same rows idempotently.
        this.metrics.conflictRetries.inc()
        this.conflictModeUntil = performance.now() + CONFLICT_MODE_MS
      }
    }
    const inserted = (await this.db.query(upsert, params)).rowCount
    // Stay in conflict mode while duplicates keep arriving (a re-upload burst); otherwise it lapses.
    if (inserted < rows) this.conflictModeUntil = performance.now() + CONFLICT_MODE_MS
    return inserted
  }

  private async flush(cols: Columns): Promise<void> {
    const rows = cols.rows
    this.metrics.flushRows.observe(rows)
    let attempt = 0
    for (;;) {
      try {
        const inserted = await this.write(cols)
        this.healthy = true
        this.settle(cols, { inserted, rows }, null)
        const dup = rows - inserted
        if (dup > 0) this.metrics.duplicates.inc({ where: 'database' }, dup)
        return
      } catch (err) {
        this.metrics.writeErrors.inc()
        if (!isConnectionError(err) && cols.waiters.length > 1) {
          // A statement error that is not about connectivity: find the batch that causes it by writing alone.
          this.log.error(
            { err: (err as Error).message, rows },
            'group commit refused by the database; retrying batch by batch',
          )
          await this.splitAndRetry(cols)
          return
        }
        if (!isConnectionError(err)) {
          this.log.error({ err: (err as Error).message }, 'batch refused by the database')
          this.settle(cols, { inserted: 0, rows }, new StoreRejectedError((err as Error).message))
          return
        }
        this.healthy = false
        const delay = Math.min(5000, 100 * 2 ** attempt) * (0.5 + Math.random() / 2)
        attempt++
        if (attempt === 1 || attempt % 10 === 0) {
          this.log.warn({ err: (err as Error).message, rows, attempt }, 'database unreachable; commit will be retried')
        }
        await sleep(delay)
      }
    }
  }

  private settle(cols: Columns, outcome: CommitOutcome, err: Error | null): void {
    const now = performance.now()
    this.queued -= cols.rows
    this.metrics.queueDepth.set(this.queued)
    for (const w of cols.waiters) {
      this.metrics.commitLatency.observe((now - w.enqueuedAt) / 1000)
      if (err) w.reject(err)
      else w.resolve(outcome)
    }
  }

  /** Binary split by batch until the refused batch stands alone; the others commit normally. */
  private async splitAndRetry(cols: Columns): Promise<void> {
    const halves = splitColumns(cols)
    this.queued -= cols.rows
    for (const h of halves) this.queued += h.rows
    for (const h of halves) await this.flush(h)
  }

  /**
   * Resolves once every row queued before the call is committed or refused (its submit() promise settled); rows
   * queued later do not hold it up beyond the flush they share. An erasure waits here after refusing new rows of the
   * person, so nothing of theirs is still on its way to the database when it deletes.
   */
  flushBarrier(): Promise<void> {
    const waiting = new Set<Columns>([...this.flying, ...this.ready])
    if (this.current.rows > 0) waiting.add(this.current)
    if (waiting.size === 0) return Promise.resolve()
    return new Promise((resolve) => this.barriers.push({ waiting, resolve }))
  }

  private passBarriers(done: Columns): void {
    if (this.barriers.length === 0) return
    this.barriers = this.barriers.filter((b) => {
      b.waiting.delete(done)
      if (b.waiting.size > 0) return true
      b.resolve()
      return false
    })
  }

  /** Resolves when nothing is queued or in flight (or the timeout passes); new submissions are refused. */
  async close(timeoutMs: number): Promise<boolean> {
    this.closed = true
    this.seal()
    if (this.queued === 0 && this.inflight === 0) return true
    const drained = new Promise<boolean>((resolve) => this.drainWaiters.push(() => resolve(true)))
    const timeout = sleep(timeoutMs).then(() => false)
    return Promise.race([drained, timeout])
  }

  private checkDrained(): void {
    if (this.queued === 0 && this.inflight === 0 && this.drainWaiters.length > 0) {
      for (const w of this.drainWaiters.splice(0)) w()
    }
  }
}

/** Splits a merged flush in two halves by waiter; each waiter's rows are contiguous (its span). */
function splitColumns(cols: Columns): Columns[] {
  if (cols.waiters.length < 2) return [cols]
  const mid = Math.floor(cols.waiters.length / 2)
  return [slice(cols, 0, mid), slice(cols, mid, cols.waiters.length)]
}

interface Span {
  s0: number
  s1: number
  p0: number
  p1: number
}

function slice(cols: Columns, from: number, to: number): Columns {
  const out = new Columns()
  for (let i = from; i < to; i++) {
    const sp = cols.spans[i] as Span
    const scalars: ScalarSample[] = []
    const positions: PositionSample[] = []
    for (let k = sp.s0; k < sp.s1; k++) {
      scalars.push({ t: cols.sTime[k] as number, metric: cols.sMetric[k] as number, value: cols.sValue[k] as number })
    }
    for (let k = sp.p0; k < sp.p1; k++) {
      positions.push({
        t: cols.pTime[k] as number,
        lat: cols.pLat[k] as number,
        lon: cols.pLon[k] as number,
        alt: cols.pAlt[k] ?? null,
        acc: cols.pAcc[k] ?? null,
      })
    }
    const dev = (sp.s1 > sp.s0 ? cols.sDev[sp.s0] : cols.pDev[sp.p0]) as number
    out.add(dev, scalars, positions, cols.waiters[i] as Waiter)
  }
  return out
}
