// A dedicated PostgreSQL connection that LISTENs on one channel. Not from the pool: a pooled connection is handed to
// others and LISTEN is per session. When the connection is lost (server restart, pg_terminate_backend, network) it
// reconnects with capped exponential backoff; notifications sent while it was away are lost for good (PostgreSQL
// keeps none for a session that is not there), so every re-established LISTEN is reported through onListening(true)
// and the owner flushes whatever it caches.
import pg from 'pg'
import type { Logger } from '../log.js'
import { isConnectionError } from '../store/db.js'

export interface PgListenerOptions {
  url: string
  channel: string
  /** application_name of the session (operators and tests find it in pg_stat_activity) */
  applicationName: string
  log: Logger
  /** first retry after this long, doubling up to maxBackoffMs */
  minBackoffMs?: number
  maxBackoffMs?: number
  onNotification(payload: string): void
  /** LISTEN is in force; `resumed`: after a lost connection (notifications may have been missed) */
  onListening(resumed: boolean): void
  onLost?(err: Error): void
  /** the server refused LISTEN itself (a proxy or an engine without it): no retry; the owner falls back */
  onUnsupported?(err: Error): void
}

const CHANNEL_RE = /^[a-z_][a-z0-9_]{0,62}$/

export class PgListener {
  private client: pg.Client | null = null
  private timer: NodeJS.Timeout | null = null
  private stopped = false
  private everListened = false
  private attempt = 0
  private firstListen: Promise<void>
  private resolveFirst: () => void = () => {}

  constructor(private readonly opts: PgListenerOptions) {
    if (!CHANNEL_RE.test(opts.channel)) throw new Error(`invalid channel name ${JSON.stringify(opts.channel)}`)
    this.firstListen = new Promise((r) => {
      this.resolveFirst = r
    })
  }

  /** Starts connecting; resolves once LISTEN is in force the first time (or stop() is called). */
  start(): Promise<void> {
    void this.connect()
    return this.firstListen
  }

  /** true while a LISTEN session is up */
  get listening(): boolean {
    return this.client !== null
  }

  /** The backend pid of the LISTEN session (null while down): tests terminate it. */
  pid: number | null = null

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    this.resolveFirst()
    const c = this.client
    this.client = null
    this.pid = null
    await c?.end().catch(() => {})
  }

  private async connect(): Promise<void> {
    if (this.stopped) return
    const c = new pg.Client({
      connectionString: this.opts.url,
      application_name: this.opts.applicationName,
      connectionTimeoutMillis: 3000,
      keepAlive: true,
    })
    let lost = false
    const onLost = (err: Error) => {
      if (lost) return
      lost = true
      if (this.client === c) {
        this.client = null
        this.pid = null
      }
      c.removeAllListeners('notification')
      void c.end().catch(() => {})
      if (this.stopped) return
      this.opts.onLost?.(err)
      this.schedule()
    }
    // Without an 'error' listener a dropped connection would crash the process.
    c.on('error', onLost)
    c.on('end', () => onLost(new Error('listener connection ended')))
    c.on('notification', (n) => {
      if (n.channel === this.opts.channel && n.payload !== undefined) this.opts.onNotification(n.payload)
    })
    let phase: 'connect' | 'listen' = 'connect'
    try {
      await c.connect()
      phase = 'listen'
      await c.query(`LISTEN ${this.opts.channel}`)
      const r = await c.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
      if (lost) return
      if (this.stopped) {
        await c.end().catch(() => {})
        return
      }
      this.client = c
      this.pid = r.rows[0]?.pid ?? null
      const resumed = this.everListened
      this.everListened = true
      this.attempt = 0
      this.opts.log.info({ channel: this.opts.channel, resumed }, 'control plane: listening')
      this.opts.onListening(resumed)
      this.resolveFirst()
    } catch (err) {
      if (phase === 'listen' && !lost && !isConnectionError(err) && (err as { code?: string }).code) {
        // A SQL error to LISTEN (not a lost connection): asking again would only fail again.
        lost = true
        this.stopped = true
        void c.end().catch(() => {})
        this.resolveFirst()
        this.opts.onUnsupported?.(err as Error)
        return
      }
      onLost(err as Error)
    }
  }

  private schedule(): void {
    if (this.stopped || this.timer) return
    const min = this.opts.minBackoffMs ?? 100
    const max = this.opts.maxBackoffMs ?? 5000
    // Jittered so a fleet of brokers does not reconnect in lockstep after a server restart.
    const delay = Math.min(max, min * 2 ** this.attempt) * (0.5 + Math.random() / 2)
    this.attempt++
    this.opts.log.warn({ retryInMs: Math.round(delay) }, 'control plane: listener connection lost, reconnecting')
    this.timer = setTimeout(() => {
      this.timer = null
      void this.connect()
    }, delay)
    this.timer.unref()
  }
}
