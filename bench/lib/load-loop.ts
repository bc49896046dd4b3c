// The parts every load-generator worker shares (bench/lib/ingest-worker.ts, bench/lib/compare-worker.ts, through
// bench/lib/worker-protocol.ts): opening the connections at a ramp, and the open-loop schedule of a fixed message rate.
import fs from 'node:fs'
import tls from 'node:tls'
import { LiteClient } from './mqtt-lite.js'
import { encodeHistogram, latencyHistogram } from './stats.js'

export interface RampConn {
  dev: { deviceId: string; certPath: string; keyPath: string }
  client: LiteClient | null
}

export interface RampResult {
  ok: number
  failed: number
  errors: string[]
  /** connect latency, encoded HDR histogram (µs) */
  hist: string
  elapsedMs: number
}

export interface RampOptions<C> {
  host: string
  port: number
  /** mTLS with each device's certificate (server checked against caPath), or plain TCP */
  mtls: boolean
  caPath: string
  rampPerSec: number
  keepaliveS: number
  onPuback(c: C, pid: number): void
  onClose(c: C, err: Error | null | undefined): void
}

/** Connects every conn, `rampPerSec` a second in ten slices a second; `c.client` is set once connected. */
export async function connectRamp<C extends RampConn>(conns: C[], o: RampOptions<C>): Promise<RampResult> {
  const ca = o.mtls ? fs.readFileSync(o.caPath) : null
  const h = latencyHistogram()
  const errors: string[] = []
  let ok = 0
  let failed = 0
  const started = performance.now()
  const perTick = Math.max(1, Math.round(o.rampPerSec / 10))
  const pending: Promise<void>[] = []
  for (let i = 0; i < conns.length; i += perTick) {
    const tickStart = performance.now()
    for (const c of conns.slice(i, i + perTick)) {
      const secureContext = ca
        ? tls.createSecureContext({ key: fs.readFileSync(c.dev.keyPath), cert: fs.readFileSync(c.dev.certPath), ca })
        : null
      const client = new LiteClient({
        host: o.host,
        port: o.port,
        clientId: c.dev.deviceId,
        secureContext,
        servername: 'localhost',
        keepaliveS: o.keepaliveS,
        onPuback: (pid) => o.onPuback(c, pid),
        onClose: (err) => o.onClose(c, err),
      })
      const t = performance.now()
      pending.push(
        client.connect(20_000).then(
          () => {
            h.recordValue(Math.max(1, Math.round((performance.now() - t) * 1000)))
            c.client = client
            ok++
          },
          (err: Error) => {
            failed++
            if (errors.length < 10) errors.push(`${c.dev.deviceId}: ${err.message}`)
          },
        ),
      )
    }
    const wait = 100 - (performance.now() - tickStart)
    if (wait > 0 && i + perTick < conns.length) await new Promise((r) => setTimeout(r, wait))
  }
  await Promise.all(pending)
  return { ok, failed, errors, hist: encodeHistogram(h), elapsedMs: performance.now() - started }
}

export interface ScheduledConn {
  client: LiteClient | null
  /** in the ready FIFO */
  queued: boolean
}

/**
 * Open loop at a fixed rate: by time t, rate·t messages, round-robin over the connections that have window room (a
 * FIFO of them: O(1) per message, no scanning of full windows). When none has room, or the schedule is more than
 * 50 ms behind, the messages count as missed (no catch-up bursts).
 */
export class OpenLoop<C extends ScheduledConn> {
  private ready: C[] = []
  private head = 0
  private timer: NodeJS.Timeout | null = null

  constructor(
    private readonly rate: number,
    private readonly hasRoom: (c: C) => boolean,
    private readonly publish: (c: C) => void,
    private readonly onMissed: (n: number) => void,
  ) {}

  /** Call when a connection may have window room again (started, or a PUBACK came back). */
  enqueue(c: C): void {
    if (c.queued || !this.hasRoom(c)) return
    c.queued = true
    this.ready.push(c)
  }

  start(live: readonly C[]): void {
    if (live.length === 0) return
    for (const c of live) this.enqueue(c)
    const t0 = performance.now()
    let scheduled = 0
    const slack = Math.max(1, this.rate * 0.05)
    this.timer = setInterval(() => {
      const due = Math.floor((this.rate * (performance.now() - t0)) / 1000)
      if (due - scheduled > slack) {
        const skip = due - scheduled - Math.floor(slack)
        scheduled += skip
        this.onMissed(skip)
      }
      while (scheduled < due) {
        const c = this.head < this.ready.length ? (this.ready[this.head++] as C) : null
        if (this.head > 4096 && this.head * 2 > this.ready.length) {
          this.ready = this.ready.slice(this.head)
          this.head = 0
        }
        if (!c) {
          // every window full: the rest of this tick's messages are missed
          this.onMissed(due - scheduled)
          scheduled = due
          break
        }
        c.queued = false
        if (!c.client?.connected) continue
        this.publish(c)
        scheduled++
        this.enqueue(c)
      }
    }, 1)
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer)
    this.timer = null
  }
}

/** PINGs every half keep-alive to the connections of a run; returns the function that stops them. */
export function keepAlive(live: readonly ScheduledConn[], keepaliveS: number): () => void {
  const timer = setInterval(
    () => {
      for (const c of live) if (c.client?.connected) c.client.ping()
    },
    (keepaliveS * 1000) / 2,
  )
  return () => clearInterval(timer)
}

/** The end of a run: waits for the PUBACKs still in flight, or for a timeout. */
export class Drain {
  private resolve: (() => void) | null = null

  /** a drain is under way */
  get active(): boolean {
    return this.resolve !== null
  }

  /** Call whenever the count in flight may have dropped to zero. */
  settled(inflight: number): void {
    if (inflight === 0) this.resolve?.()
  }

  /** Resolves with the time waited, in ms. */
  async wait(inflight: number, timeoutMs: number): Promise<number> {
    const started = performance.now()
    if (inflight > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs)
        this.resolve = () => {
          clearTimeout(timer)
          resolve()
        }
      })
    }
    this.resolve = null
    return performance.now() - started
  }
}
