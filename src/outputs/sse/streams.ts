// Live streams over Server-Sent Events (better-sse does the framing). A stream is one piece of output state — an
// event's board, its statistics, a runner's progress — with the newest state serialised and framed once for all its
// readers, and written to them in slices (FANOUT_SLICE) with yields between, so MQTT work interleaves.
// Bounded by design: a stream holds one state, never a history; a reader whose socket has more than maxQueuedBytes
// unsent skips the states that come meanwhile and gets the newest one when it drains ("dropped to latest"). Updates
// go out at most once per minIntervalMs per stream (newer states replace a pending one). Event ids are monotonic per
// stream (max(previous + 1, now)); a client resuming with Last-Event-ID gets the current state once unless it has it.
import type http from 'node:http'
import { createEventBuffer, type EventBuffer, type Session } from 'better-sse'
import { Counter, Gauge, type Registry } from 'prom-client'

export type StreamKind = 'leaderboard' | 'stats' | 'runner'

export interface StreamSettings {
  heartbeatMs: number
  minIntervalMs: number
  maxQueuedBytes: number
}

/** What a session carries: its response, whose socket tells how much is still unsent. */
export interface ReaderState {
  res: http.ServerResponse
  /** skipped while backpressured; waiting for the socket to drain */
  waiting: boolean
  /** id of the last state written to it (initially its Last-Event-ID) */
  sent: string
}
export type Reader = Session<ReaderState>

export function createStreamMetrics(registry: Registry, clients: () => Map<StreamKind, number>, queued: () => number) {
  const registers = [registry]
  return {
    clients: new Gauge({
      name: 'pulsegate_sse_clients',
      help: 'open Server-Sent Events streams (/live/…), by kind',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset()
        for (const [kind, n] of clients()) this.set({ kind }, n)
      },
    }),
    sent: new Counter({
      name: 'pulsegate_sse_events_sent_total',
      help: 'states written to SSE clients, by stream kind',
      labelNames: ['kind'],
      registers,
    }),
    dropped: new Counter({
      name: 'pulsegate_sse_dropped_to_latest_total',
      help: 'states a slow SSE client skipped (its socket was backed up); it gets the newest one when it drains',
      labelNames: ['kind'],
      registers,
    }),
    refused: new Counter({
      name: 'pulsegate_sse_refused_total',
      help: 'live requests refused: capacity (503), unauthorized (401), forbidden (403), not_found (404), bad_request',
      labelNames: ['reason'],
      registers,
    }),
    ended: new Counter({
      name: 'pulsegate_sse_ended_total',
      help: 'SSE streams the broker ended: consent (the runner withdrew live_sharing), erasure, shutdown',
      labelNames: ['reason'],
      registers,
    }),
    queuedBytes: new Gauge({
      name: 'pulsegate_sse_queued_bytes_max',
      help: 'the most bytes unsent on any one SSE client socket (bounded by live.maxQueuedBytes plus one state)',
      registers,
      collect() {
        this.set(queued())
      },
    }),
  }
}
export type StreamMetrics = ReturnType<typeof createStreamMetrics>

/** readers written to between two yields to the event loop: 10,000 readers must not hold every PUBACK for 200 ms */
export const FANOUT_SLICE = 500

export class LiveStream {
  readonly readers = new Set<Reader>()
  /** the newest state, framed once (event, id, data) for all its readers; null until there is one */
  frame: EventBuffer | null = null
  id = 0
  /** requests holding the stream (attached readers and requests still opening) */
  holders = 0
  private pending: string | null = null
  private lastFlush = 0
  private timer: NodeJS.Timeout | null = null
  private fanning = false
  private again = false
  /** set once the source is followed and the current state (if any) is loaded */
  ready: Promise<void> = Promise.resolve()
  teardown: () => void = () => {}

  /** the counters of this kind, bound once (a fan-out counts 10,000 writes) */
  readonly sent: Counter.Internal
  readonly dropped: Counter.Internal

  constructor(
    readonly key: string,
    readonly kind: StreamKind,
    private readonly hub: LiveHub,
  ) {
    this.sent = hub.metrics.sent.labels({ kind })
    this.dropped = hub.metrics.dropped.labels({ kind })
  }

  /** A new state: out now, or at the end of the current interval (replacing one already pending). */
  update(data: string): void {
    this.pending = data
    if (this.timer) return
    const wait = this.lastFlush + this.hub.settings.minIntervalMs - Date.now()
    if (wait <= 0) this.flush()
    else {
      this.timer = setTimeout(() => {
        this.timer = null
        this.flush()
      }, wait)
      this.timer.unref()
    }
  }

  private flush(): void {
    if (this.pending === null) return
    this.lastFlush = Date.now()
    this.id = Math.max(this.id + 1, this.lastFlush)
    this.frame = createEventBuffer({ serializer: String }).push(this.pending, this.kind, String(this.id))
    this.pending = null
    void this.fanOut()
  }

  /** Every reader gets the newest state, in slices; a newer state during a fan-out restarts it (the readers already
   *  written to are skipped, the others get the newest directly). */
  private async fanOut(): Promise<void> {
    if (this.fanning) {
      this.again = true
      return
    }
    this.fanning = true
    try {
      do {
        this.again = false
        let n = 0
        for (const r of [...this.readers]) {
          if (++n % FANOUT_SLICE === 0) await new Promise<void>((resolve) => setImmediate(resolve))
          this.hub.deliver(r, this)
        }
      } while (this.again)
    } finally {
      this.fanning = false
    }
  }

  /** No more readers: stop following the source. */
  close(): void {
    if (this.timer) clearTimeout(this.timer)
    this.timer = null
    this.teardown()
  }
}

export class LiveHub {
  private readonly streams = new Map<string, LiveStream>()
  private readonly heartbeat = createEventBuffer().comment().dispatch()
  private readonly timer: NodeJS.Timeout
  readonly metrics: StreamMetrics
  /** open readers, all streams together (the capacity cap) */
  open = 0

  constructor(
    readonly settings: StreamSettings,
    registry: Registry,
  ) {
    this.metrics = createStreamMetrics(
      registry,
      () => this.clientsByKind(),
      () => this.maxQueued(),
    )
    // One timer for every reader rather than one each: 10,000 clients are 10,000 sockets, not 10,000 intervals. A
    // backed-up socket gets no heartbeat (it is not idle, and the bytes would only queue).
    this.timer = setInterval(() => {
      for (const s of this.streams.values())
        for (const r of s.readers) if (r.isConnected && r.state.res.writableLength === 0) void r.batch(this.heartbeat)
    }, settings.heartbeatMs)
    this.timer.unref()
  }

  /** The stream of `key`, created (and its source followed by `follow`) when it is not open yet; held until release. */
  acquire(key: string, kind: StreamKind, follow: (s: LiveStream) => Promise<() => void>): LiveStream {
    let s = this.streams.get(key)
    if (!s) {
      const created = new LiveStream(key, kind, this)
      s = created
      this.streams.set(key, created)
      created.ready = follow(created).then(
        (stop) => {
          created.teardown = stop
        },
        (err: unknown) => {
          // A source that could not be followed is not kept: the next request tries again.
          if (this.streams.get(key) === created) this.streams.delete(key)
          throw err
        },
      )
    }
    s.holders++
    return s
  }

  /** A request holding the stream is done with it; the last one closes it. */
  release(s: LiveStream): void {
    s.holders--
    if (s.holders > 0) return
    if (this.streams.get(s.key) === s) this.streams.delete(s.key)
    void s.ready.then(
      () => s.close(),
      () => {},
    )
  }

  /** A connected session reads the stream from now on (and gets the current state unless it has it). */
  attach(s: LiveStream, r: Reader): void {
    s.readers.add(r)
    this.open++
    r.once('disconnected', () => {
      s.readers.delete(r)
      this.open--
      this.release(s)
    })
    this.deliver(r, s)
  }

  /** Writes the stream's newest state to one reader, unless it has it or its socket is backed up. */
  deliver(r: Reader, s: LiveStream): void {
    if (!r.isConnected || s.frame === null) return
    const id = String(s.id)
    if (r.state.sent === id) return
    const res = r.state.res
    if (res.writableLength > this.settings.maxQueuedBytes) {
      s.dropped.inc()
      if (r.state.waiting) return
      r.state.waiting = true
      const retry = () => {
        r.state.waiting = false
        this.deliver(r, s)
      }
      // Past the high-water mark a drain event comes; below it (a small maxQueuedBytes) look again shortly.
      if (res.writableNeedDrain) res.once('drain', retry)
      else setTimeout(retry, 100).unref()
      return
    }
    r.state.sent = id
    void r.batch(s.frame)
    s.sent.inc()
  }

  /** Ends the readers of the streams `which` selects (their clients see the stream close). */
  end(which: (s: LiveStream) => boolean, reason: 'consent' | 'erasure' | 'shutdown'): void {
    for (const s of this.streams.values()) {
      if (!which(s)) continue
      for (const r of s.readers) {
        this.metrics.ended.inc({ reason })
        r.state.res.end()
      }
    }
  }

  stop(): void {
    clearInterval(this.timer)
    this.end(() => true, 'shutdown')
  }

  private clientsByKind(): Map<StreamKind, number> {
    const out = new Map<StreamKind, number>([
      ['leaderboard', 0],
      ['stats', 0],
      ['runner', 0],
    ])
    for (const s of this.streams.values()) out.set(s.kind, (out.get(s.kind) ?? 0) + s.readers.size)
    return out
  }

  private maxQueued(): number {
    let max = 0
    for (const s of this.streams.values()) for (const r of s.readers) max = Math.max(max, r.state.res.writableLength)
    return max
  }
}
