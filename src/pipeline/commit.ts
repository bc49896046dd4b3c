// Group commit: samples from many connections are gathered for a few milliseconds (or until a size cap) and written
// with one INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING per table. Every waiting QoS 1 batch is released
// only when the statement that carried its rows has committed. The queue is bounded; a failed statement is retried
// with backoff until the database comes back, so nothing accepted is ever dropped here. A flush with GPS fixes is one
// statement that also derives their distance (commit-rows.ts): the fixes and their distance commit together or not
// at all.
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { type Db, isConnectionError, isTransientConflict, isUniqueViolation, type Queryable } from '../store/db.js'
import {
  type BatchMark,
  Columns,
  ensureTracks,
  INSERT_SAMPLES,
  INSERT_SIGNED_BATCHES,
  KnownTracks,
  markParams,
  PLAIN_SAMPLES,
  sampleParams,
  splitColumns,
  type CommitOutcome,
  type TrackedResult,
  writeTracked,
} from './commit-rows.js'
import { binaryArrays } from './pg-arrays.js'
import type { PositionSample, ScalarSample } from './types.js'

export { type BatchMark, type CommitOutcome, INSERT_POSITIONS, INSERT_SAMPLES } from './commit-rows.js'
export { numericArrayLiteral } from './pg-arrays.js'

export interface WriterOptions {
  maxBatchRows: number
  flushIntervalMs: number
  maxQueuedRows: number
  writers: number
}

interface WriteResult {
  inserted: number
  /** per waiter of the flush */
  derived: ScalarSample[][]
}

/** A batch the database itself refused (not a connectivity problem): it is retried alone, then reported. */
export class StoreRejectedError extends Error {}
export class QueueFullError extends Error {}
export class WriterClosedError extends Error {}

/** after a unique violation, statements carry ON CONFLICT for this long (a re-upload usually comes in a burst) */
const CONFLICT_MODE_MS = 30_000

/**
 * How column arrays travel: binary (array_send format) to PostgreSQL and to the embedded store alike. PGlite binds a
 * Uint8Array parameter in binary too (its array serializer passes non-arrays through, its Bind sends byte views as
 * format 1; test/integration/pg-arrays.test.ts on both threads): parsing text literals was ~40 % of a 20,000-row
 * INSERT on the embedded store, ×1.15–1.2 its saturation.
 */
const ARR = binaryArrays

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

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
  /** devices whose track row exists, so a flush statement can lock it (commit-rows.ts) */
  private readonly knownTracks = new KnownTracks()
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
    mark?: BatchMark,
  ): Promise<CommitOutcome> {
    if (this.closed) throw new WriterClosedError('writer is shutting down')
    const rows = scalars.length + positions.length
    if (!this.hasRoom(rows)) throw new QueueFullError(`ingest queue full (${this.queued} rows waiting)`)
    return new Promise<CommitOutcome>((resolve, reject) => {
      const c = this.current
      c.add(deviceKey, scalars, positions, { resolve, reject, enqueuedAt: performance.now() }, mark)
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
   * Readings alone: one autocommit statement. With fixes: one statement too (commit-rows.ts) that locks the devices'
   * tracks, stores the fixes, derives distance from the ones that were new and stores it with the other samples.
   */
  private async write(cols: Columns): Promise<WriteResult> {
    const started = performance.now()
    let result: WriteResult
    if (cols.pTime.length === 0) {
      const n = await this.insert(this.db, INSERT_SAMPLES, PLAIN_SAMPLES, sampleParams(cols, ARR), cols.sTime.length)
      this.metrics.rowsCommitted.inc({ table: 'samples' }, n)
      result = { inserted: n, derived: [] }
    } else {
      const upsert = performance.now() < this.conflictModeUntil
      await ensureTracks(this.db, cols, this.knownTracks, ARR)
      try {
        result = this.tracked(await writeTracked(this.db, cols, upsert, ARR), cols, upsert)
      } catch (err) {
        if (upsert || !isUniqueViolation(err)) throw err
        // The statement wrote nothing: the same rows again, idempotently.
        this.metrics.conflictRetries.inc()
        this.conflictModeUntil = performance.now() + CONFLICT_MODE_MS
        result = this.tracked(await writeTracked(this.db, cols, true, ARR), cols, true)
      }
    }
    if (cols.bDev.length > 0) {
      // After the samples: a mark never claims rows that are not stored. Redeliveries are no-ops (unique key).
      const n = (await this.db.query(INSERT_SIGNED_BATCHES, markParams(cols, ARR))).rowCount
      this.metrics.rowsCommitted.inc({ table: 'signed_batches' }, n)
    }
    this.metrics.statementLatency.observe((performance.now() - started) / 1000)
    return result
  }

  private tracked(r: TrackedResult, cols: Columns, upsert: boolean): WriteResult {
    this.metrics.rowsCommitted.inc({ table: 'samples' }, r.samplesIn)
    this.metrics.rowsCommitted.inc({ table: 'positions' }, r.positionsIn)
    // Stay in conflict mode while duplicates keep arriving (a re-upload burst).
    if (upsert && r.inserted < cols.rows) this.conflictModeUntil = performance.now() + CONFLICT_MODE_MS
    return { inserted: r.inserted, derived: r.derived }
  }

  /** Plain INSERT while no duplicates are around; after a unique violation, the same rows with ON CONFLICT. */
  private async insert(q: Queryable, upsert: string, plain: string, params: unknown[], rows: number): Promise<number> {
    if (performance.now() >= this.conflictModeUntil) {
      try {
        return (await q.query(plain, params)).rowCount
      } catch (err) {
        if (!isUniqueViolation(err)) throw err
        // The failed statement wrote nothing (it is atomic): write the same rows idempotently.
        this.metrics.conflictRetries.inc()
        this.conflictModeUntil = performance.now() + CONFLICT_MODE_MS
      }
    }
    const inserted = (await q.query(upsert, params)).rowCount
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
        const { inserted, derived } = await this.write(cols)
        this.healthy = true
        this.settle(cols, { inserted, rows, derived: [] }, null, derived)
        const dup = rows - inserted
        if (dup > 0) this.metrics.duplicates.inc({ where: 'database' }, dup)
        return
      } catch (err) {
        this.metrics.writeErrors.inc()
        if (isTransientConflict(err)) {
          // Two flushes crossed (a deadlock PostgreSQL broke by cancelling this one): nothing of it is stored, and the
          // same rows again will pass once the other has committed. Not the batch's fault, so not split or refused.
          this.log.warn({ err: (err as Error).message, rows }, 'commit conflicted with another; retrying')
          await sleep(5 + Math.random() * 20)
          continue
        }
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
          this.settle(cols, { inserted: 0, rows, derived: [] }, new StoreRejectedError((err as Error).message))
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

  private settle(cols: Columns, outcome: CommitOutcome, err: Error | null, derived: ScalarSample[][] = []): void {
    const now = performance.now()
    this.queued -= cols.rows
    this.metrics.queueDepth.set(this.queued)
    cols.waiters.forEach((w, i) => {
      this.metrics.commitLatency.observe((now - w.enqueuedAt) / 1000)
      if (err) w.reject(err)
      else w.resolve({ ...outcome, derived: derived[i] ?? [] })
    })
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
