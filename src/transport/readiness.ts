// Readiness of the broker's Redis connection(s) for /readyz: a load balancer should stop sending new clients to a
// node whose Redis has been gone for longer than a bound (a short blip must not empty the pool). Anything with
// ioredis' `status` and connection events can be watched (the leaderboard's client today; cluster mode's later).
// An outage is also an operator's message: logged once when it starts (with the cause) and once when it ends,
// counted (pulsegate_redis_outages_total) and shown as pulsegate_redis_up and in /readyz's `dependencies`.
import { Counter, Gauge, type Registry } from 'prom-client'
import type { Logger } from '../log.js'

/** The part of an ioredis client this needs. */
export interface RedisLink {
  readonly status: string
  on(event: 'ready' | 'close' | 'end' | 'reconnecting', listener: () => void): unknown
  on(event: 'error', listener: (err: Error) => void): unknown
}

export interface RedisReadinessReport {
  ok: boolean
  /** ms the longest-down connection has been down (0 when all are up) */
  downForMs: number
}

/** One watched connection as /readyz shows it. */
export interface RedisConnectionState {
  name: string
  up: boolean
  /** ms down, 0 when up */
  downForMs: number
  /** the last error of the current outage, e.g. `connect ECONNREFUSED 127.0.0.1:6390` */
  error: string | null
}

export interface RedisObservers {
  log: Logger
  registry: Registry
  /** where the connections point, for the log line (credentials are stripped); '' when unknown */
  url?: string
}

interface Watched {
  name: string
  since: number | null
  error: string | null
  /** an outage was logged and counted, its recovery not yet */
  reported: boolean
}

/** `redis://user:secret@host:6379/0` → `redis://host:6379/0`: a log line must not carry a password. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url)
    u.username = ''
    u.password = ''
    return u.toString()
  } catch {
    return '(unparsable URL)'
  }
}

export class RedisReadiness {
  readonly #down = new Map<RedisLink, Watched>()
  readonly #outages: Counter | null = null
  constructor(
    private readonly boundMs: number,
    private readonly now: () => number = Date.now,
    private readonly observers?: RedisObservers,
  ) {
    if (!observers) return
    const registers = [observers.registry]
    this.#outages = new Counter({
      name: 'pulsegate_redis_outages_total',
      help: 'Redis connections lost or never established, by connection (one per outage)',
      labelNames: ['connection'],
      registers,
    })
    const links = this.#down
    new Gauge({
      name: 'pulsegate_redis_up',
      help: '1 while the Redis connection is ready, 0 while it is down (absent without Redis)',
      labelNames: ['connection'],
      registers,
      collect() {
        this.reset()
        for (const [link, w] of links) this.set({ connection: w.name }, link.status === 'ready' ? 1 : 0)
      },
    })
  }

  watch(link: RedisLink, name = 'redis'): void {
    const w: Watched = { name, since: link.status === 'ready' ? null : this.now(), error: null, reported: false }
    this.#down.set(link, w)
    this.#outages?.inc({ connection: name }, 0)
    link.on('ready', () => {
      if (w.reported) {
        const downMs = w.since === null ? 0 : this.now() - w.since
        this.observers?.log.info({ connection: name, downMs }, `Redis (${name}) is reachable again after ${downMs} ms`)
      }
      w.since = null
      w.error = null
      w.reported = false
    })
    const lost = () => {
      if (w.since == null) w.since = this.now()
    }
    link.on('close', lost)
    link.on('end', lost)
    // A connection that was up and drops gives no error until a reconnect attempt fails: reported here then.
    link.on('reconnecting', () => {
      lost()
      this.#reportOutage(w)
    })
    // ioredis emits 'error' for every failed attempt; an outage is reported at its first one only.
    link.on('error', (err: Error) => {
      lost()
      w.error = err.message || (err as { code?: string }).code || 'error'
      this.#reportOutage(w)
    })
  }

  #reportOutage(w: Watched): void {
    if (w.reported || !this.observers) return
    w.reported = true
    this.#outages?.inc({ connection: w.name })
    const where = this.observers.url ? redactUrl(this.observers.url) : 'PULSEGATE_REDIS_URL'
    const why = w.error ?? 'connection lost'
    this.observers.log.error(
      { connection: w.name, err: why, url: where },
      `Redis (${w.name}) at ${where} is unreachable: ${why}. Leaderboards are not updated until it returns; ` +
        `/readyz turns 503 after readiness.redisDownMs (PULSEGATE_READY_REDIS_DOWN_MS, ${this.boundMs} ms)`,
    )
  }

  get watching(): number {
    return this.#down.size
  }

  report(): RedisReadinessReport {
    let downForMs = 0
    for (const state of this.details()) downForMs = Math.max(downForMs, state.downForMs)
    return { ok: downForMs <= this.boundMs, downForMs }
  }

  /** Every watched connection: up or down, for how long, and why. */
  details(): RedisConnectionState[] {
    const out: RedisConnectionState[] = []
    for (const [link, w] of this.#down) {
      // status is the truth; the events only date the outage
      if (link.status === 'ready') {
        out.push({ name: w.name, up: true, downForMs: 0, error: null })
        continue
      }
      if (w.since == null) w.since = this.now()
      out.push({ name: w.name, up: false, downForMs: this.now() - w.since, error: w.error })
    }
    return out
  }
}

/** What /readyz asks of the broker. */
export interface ReadinessDeps {
  db: { query(sql: string): Promise<unknown> }
  writer: { readonly healthy: boolean; readonly queuedRows: number }
  isReady(): boolean
  redis?: { report(): RedisReadinessReport; details?(): RedisConnectionState[]; readonly watching: number }
}

const PING_TIMEOUT_MS = 2000

/** `SELECT 1` within a bound: false when the database does not answer in time. */
export async function pingDatabase(db: ReadinessDeps['db']): Promise<{ up: boolean; error: string | null }> {
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([
      db.query('SELECT 1'),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${PING_TIMEOUT_MS} ms`)), PING_TIMEOUT_MS)
      }),
    ])
    return { up: true, error: null }
  } catch (err) {
    return { up: false, error: (err as Error).message.slice(0, 200) }
  } finally {
    clearTimeout(timer)
  }
}

/** pulsegate_db_up: the database answers `SELECT 1` at scrape time (an idle writer would not notice an outage). */
export function registerDatabaseGauge(registry: Registry, db: ReadinessDeps['db']): void {
  new Gauge({
    name: 'pulsegate_db_up',
    help: '1 when the database answers SELECT 1 within 2 s at scrape time, else 0',
    registers: [registry],
    async collect() {
      this.set((await pingDatabase(db)).up ? 1 : 0)
    },
  })
}

/** /readyz: status code and body (the flat fields HAProxy and scripts read, and per-dependency details). */
export async function readiness(deps: ReadinessDeps): Promise<{ ok: boolean; body: Record<string, unknown> }> {
  const database = await pingDatabase(deps.db)
  const listeners = deps.isReady()
  const redis = deps.redis && deps.redis.watching > 0 ? deps.redis.report() : null
  const ok = database.up && listeners && deps.writer.healthy && (redis?.ok ?? true)
  return {
    ok,
    body: {
      status: ok ? 'ready' : 'not_ready',
      database: database.up,
      listeners,
      writer: deps.writer.healthy,
      queuedRows: deps.writer.queuedRows,
      ...(redis ? { redis: redis.ok, redisDownMs: redis.downForMs } : {}),
      dependencies: {
        database: database.up ? { up: true } : { up: false, error: database.error },
        ...(redis ? { redis: deps.redis?.details?.() ?? [] } : {}),
      },
    },
  }
}
