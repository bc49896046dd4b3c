// The admission gate in front of the database connections (issue #16). At most `capacity` statements/transactions
// (the pool size) run at once, so the pool never has a caller waiting for a connection and its own connect timeout
// only fires for a dead server; the rest wait in their lane's FIFO, and a freed slot goes to the highest-priority
// non-empty lane. A lane over its queue or wait bound refuses with DbOverloadError, which callers treat as
// "unavailable" (isConnectionError), instead of thousands of pool time-outs surfacing as refusals.
import type { Counter, Gauge, Histogram } from 'prom-client'
import { defaultDatabaseLanes } from '../../broker.config.js'
import { type Db, DbOverloadError, LANES, type LaneName, type Queryable, type QueryResult } from './db.js'

export interface LaneBounds {
  /** waiting at most this many in the lane; one more is refused (queue_full). 0 = never wait */
  queue: number
  /** a wait longer than this is refused (wait_timeout) */
  waitMs: number
}
export type LaneSettings = Record<LaneName, LaneBounds>

export interface LaneMetrics {
  depth: Gauge<'lane'>
  wait: Histogram<'lane'>
  rejected: Counter<'lane' | 'reason'>
}

export interface LaneOptions {
  settings?: LaneSettings
  metrics?: LaneMetrics
  /** the lane of the plain Db (callers that did not pick one) */
  defaultLane?: LaneName
  /** slots admitted at once; the store's maxConcurrency unless the store queues statements itself */
  capacity?: number
}

/** The configured defaults (broker.config.ts), for the CLI and tests that open a Db directly. */
export const DEFAULT_LANE_SETTINGS: LaneSettings = defaultDatabaseLanes()

interface Waiter {
  lane: LaneName
  enqueued: number
  /** granted, timed out: either way it is no longer waiting (left in the array, skipped when reached) */
  settled: boolean
  timer: NodeJS.Timeout | null
  grant(): void
}

/** A FIFO whose timed-out entries are skipped lazily: removing from the middle of 20 000 waiters is O(n) each. */
class Fifo {
  private items: Waiter[] = []
  private head = 0
  live = 0

  push(w: Waiter): void {
    this.items.push(w)
    this.live++
  }

  shift(): Waiter | undefined {
    while (this.head < this.items.length) {
      const w = this.items[this.head++] as Waiter
      if (!w.settled) {
        this.live--
        this.compact()
        return w
      }
    }
    this.compact()
    return undefined
  }

  /** a waiter left the queue without being shifted (timed out) */
  dropped(): void {
    this.live--
    this.compact()
  }

  private compact(): void {
    const dead = this.items.length - this.head - this.live
    if (this.head === this.items.length) {
      this.items = []
      this.head = 0
    } else if (this.head + dead > 1024 && this.head + dead > this.live) {
      this.items = this.items.slice(this.head).filter((w) => !w.settled)
      this.head = 0
    }
  }
}

export class LaneGate {
  private active = 0
  private readonly queues = Object.fromEntries(LANES.map((l) => [l, new Fifo()])) as Record<LaneName, Fifo>

  constructor(
    readonly capacity: number,
    private readonly settings: LaneSettings = DEFAULT_LANE_SETTINGS,
    private readonly metrics?: LaneMetrics,
  ) {}

  /** statements/transactions running now */
  get running(): number {
    return this.active
  }

  waiting(lane: LaneName): number {
    return this.queues[lane].live
  }

  /** fn runs once admitted in `lane`; its slot is freed when it settles, thrown or not */
  async run<T>(lane: LaneName, fn: () => Promise<T>): Promise<T> {
    await this.acquire(lane)
    try {
      return await fn()
    } finally {
      this.release()
    }
  }

  private acquire(lane: LaneName): Promise<void> {
    // A slot is only ever free while every lane is empty (release hands it straight to a waiter).
    if (this.active < this.capacity) {
      this.active++
      this.metrics?.wait.observe({ lane }, 0)
      return Promise.resolve()
    }
    const q = this.queues[lane]
    const bounds = this.settings[lane]
    if (q.live >= bounds.queue) {
      this.metrics?.rejected.inc({ lane, reason: 'queue_full' })
      return Promise.reject(new DbOverloadError(lane, 'queue_full', `${q.live} waiting`))
    }
    return new Promise<void>((resolve, reject) => {
      const w: Waiter = { lane, enqueued: Date.now(), settled: false, timer: null, grant: resolve }
      w.timer = setTimeout(() => {
        w.settled = true
        q.dropped()
        this.metrics?.depth.dec({ lane })
        this.metrics?.rejected.inc({ lane, reason: 'wait_timeout' })
        reject(new DbOverloadError(lane, 'wait_timeout', `waited ${bounds.waitMs} ms, ${q.live} still waiting`))
      }, bounds.waitMs)
      q.push(w)
      this.metrics?.depth.inc({ lane })
    })
  }

  private release(): void {
    for (const lane of LANES) {
      const w = this.queues[lane].shift()
      if (!w) continue
      // The slot passes straight to the waiter: `active` stays as it is.
      w.settled = true
      if (w.timer) clearTimeout(w.timer)
      this.metrics?.depth.dec({ lane })
      this.metrics?.wait.observe({ lane }, (Date.now() - w.enqueued) / 1000)
      w.grant()
      return
    }
    this.active--
  }
}

/** The store as a Db whose every statement and transaction goes through one LaneGate sized to its connections. */
export function withLanes(raw: Omit<Db, 'lane'>, opts: LaneOptions = {}): Db {
  const gate = new LaneGate(opts.capacity ?? raw.maxConcurrency, opts.settings ?? DEFAULT_LANE_SETTINGS, opts.metrics)
  const view = (lane: LaneName): Db => ({
    kind: raw.kind,
    maxConcurrency: raw.maxConcurrency,
    query: <R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<R>> =>
      gate.run(lane, () => raw.query<R>(sql, params)),
    // One slot for the whole transaction: it holds one connection from BEGIN to COMMIT.
    transaction: <T>(fn: (q: Queryable) => Promise<T>): Promise<T> => gate.run(lane, () => raw.transaction(fn)),
    exec: (sql) => gate.run(lane, () => raw.exec(sql)),
    close: () => raw.close(),
    lane: (name) => views[name],
  })
  const views = Object.fromEntries(LANES.map((l) => [l, view(l)])) as Record<LaneName, Db>
  return views[opts.defaultLane ?? 'background']
}
