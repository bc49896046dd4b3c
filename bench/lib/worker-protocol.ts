// The parent ↔ load-generator protocol of bench/ingest.ts and bench/compare.ts, both sides, in one piece:
//   parent → worker   init (what to connect and how to load it), start, measure on / measure off, stop, exit
//   worker → parent   connected (after the ramp), window (after measure off), final (after the drain that stop starts)
// `runLoadWorker` is the worker's whole life around that protocol — connecting at the ramp, the saturating or
// open-loop publishing, the measured window, the drain, the per-device results — and a worker script
// (bench/lib/ingest-worker.ts, bench/lib/compare-worker.ts) only says what its messages are. `WorkerHandle` is the
// parent's side of the IPC channel, also used by bench/connect-mtls.ts for its own (connect-only) protocol.
import { type ChildProcess, fork } from 'node:child_process'
import type * as hdr from 'hdr-histogram-js'
import { connectRamp, Drain, keepAlive, OpenLoop, type RampResult } from './load-loop.js'
import { type LiteClient, topicBytes } from './mqtt-lite.js'
import { encodeHistogram, latencyHistogram } from './stats.js'

/** A device a worker connects as: its id and its certificate (mTLS). */
export interface WorkerDevice {
  deviceId: string
  certPath: string
  keyPath: string
}

/** What every load worker is told; a worker's own init adds what its messages are made of. */
export interface LoadWorkerInit<D extends WorkerDevice = WorkerDevice> {
  type: 'init'
  host: string
  port: number
  caPath: string
  devices: D[]
  /** unacknowledged messages per connection at most */
  inflight: number
  /** messages/s for this worker; 0 = as fast as acks come back */
  rate: number
  /** new connections per second for this worker */
  rampPerSec: number
  keepaliveS: number
}

export type ToLoadWorker<I extends LoadWorkerInit> =
  | I
  | { type: 'start' }
  | { type: 'measure'; on: boolean }
  | { type: 'stop'; drainTimeoutMs: number }
  | { type: 'exit' }

/** One worker's figures over the measured window (between measure on and measure off). */
export interface WindowReport {
  type: 'window'
  elapsedMs: number
  ackedMsgs: number
  /** readings (= rows a storing broker writes) in the acknowledged messages */
  ackedReadings: number
  ackedSamples: number
  sentMsgs: number
  /** PUBLISH packets' bytes on the wire */
  sentBytes: number
  /** rate mode: messages the schedule wanted but no connection had window room for (or that were too late) */
  missed: number
  /** ack latency publish → PUBACK, encoded HDR histogram (µs) */
  hist: string
  cpuMs: number
}

/** A worker's whole run, after the drain; `devices` are the worker's own per-device results. */
export interface FinalReport<R> {
  type: 'final'
  devices: R[]
  ackedMsgs: number
  sentMsgs: number
  closedDuringRun: number
  closeErrors: string[]
  drainMs: number
}

export type FromLoadWorker<R> = ({ type: 'connected' } & RampResult) | WindowReport | FinalReport<R>

/** The run figures the benchmarks report from the workers' final reports. */
export function runSummary(fin: FinalReport<unknown>[]) {
  return {
    sentMessages: fin.reduce((s, f) => s + f.sentMsgs, 0),
    ackedMessages: fin.reduce((s, f) => s + f.ackedMsgs, 0),
    closedDuringRun: fin.reduce((s, f) => s + f.closedDuringRun, 0),
    closeErrors: fin.flatMap((f) => f.closeErrors).slice(0, 5),
    drainMs: Math.round(Math.max(...fin.map((f) => f.drainMs))),
  }
}

// ---- parent side

/** A forked worker script: send it messages, await the next message of a type. */
export class WorkerHandle<To extends { type: string }, From extends { type: string }> {
  private waiters = new Map<string, (m: From) => void>()
  readonly child: ChildProcess

  /**
   * No inherited execArgv by default: a --cpu-prof on the broker process must not profile the generators too.
   * `intercept` sees every message first; returning true consumes it (e.g. progress lines nobody awaits).
   */
  constructor(script: URL, execArgv: string[] = [], intercept?: (m: From) => boolean, nice = 0) {
    // `nice -n N node …` keeps fork's IPC channel and starts every thread of the worker at that priority (as the
    // simulator's --generator-nice does, simulators/swarm.ts): on a machine the broker shares, a load generator at a
    // lower priority measures the broker rather than the contention for the cores.
    const niced = nice > 0 && process.platform === 'linux'
    this.child = fork(script, [], {
      ...(niced ? { execPath: 'nice', execArgv: ['-n', String(nice), process.execPath, ...execArgv] } : { execArgv }),
      stdio: 'inherit',
    })
    this.child.on('message', (m: From) => {
      if (intercept?.(m)) return
      const w = this.waiters.get(m.type)
      if (w) {
        this.waiters.delete(m.type)
        w(m)
      }
    })
  }

  send(m: To): void {
    this.child.send(m)
  }

  next<T extends From['type']>(type: T): Promise<Extract<From, { type: T }>> {
    return new Promise((resolve) => this.waiters.set(type, resolve as (m: From) => void))
  }
}

// ---- worker side

/** A message in flight: when it was sent and what it carries (counted in the window when acknowledged). */
export interface InFlight {
  sentAt: number
  samples: number
  readings: number
}

/** One device's connection in a load worker; a worker's own connection type adds its per-device state. */
export interface LoadConn<D extends WorkerDevice, E extends InFlight> {
  dev: D
  client: LiteClient | null
  topic: Buffer
  nextPid: number
  /** packet id → the message in flight */
  inflight: Map<number, E>
  /** rate mode: in the ready FIFO (has window room) */
  queued: boolean
}

/** The shared part of a new connection: no client yet, the device's readings topic, nothing in flight. */
export function loadConn<D extends WorkerDevice, E extends InFlight>(dev: D): LoadConn<D, E> {
  return {
    dev,
    client: null,
    topic: topicBytes(`devices/${dev.deviceId}/readings`),
    nextPid: 1,
    inflight: new Map(),
    queued: false,
  }
}

/** What a worker script's `publish` sends through: the bookkeeping of every message, kept here. */
export interface Outbox<C, E extends InFlight> {
  /** Takes a free packet id, records `e` in flight under it and counts it as sent; returns the packet id. */
  track(c: C, e: E): number
  /** Sends a PUBLISH packet (built with the id `track` gave) on the connection, counting its bytes. */
  send(c: C, packet: Buffer): void
}

/** What a worker script says about its load; everything else is `runLoadWorker`'s. */
export interface LoadWorker<C, E extends InFlight, R> {
  /** TLS with each device's certificate, or plain TCP */
  mtls: boolean
  conns: C[]
  /** Makes the connection's next message: `out.track` it (taking the send time), then `out.send` it. */
  publish(c: C, out: Outbox<C, E>): void
  /** A PUBACK came back for `e` (before the window counts it). */
  acked?(c: C, e: E): void
  /** After the ramp, before the parent hears of it: preparation that must not fall in the measured window. */
  connected?(): void
  /** The device's result in the final report. */
  result(c: C): R
}

/**
 * Runs this process as a load worker: waits for the parent's init, hands it to `setup` for the worker's own part,
 * then follows the protocol to the end. Call once, at the top level of the worker script.
 */
export function runLoadWorker<
  I extends LoadWorkerInit<D>,
  D extends WorkerDevice,
  E extends InFlight,
  C extends LoadConn<D, E>,
  R,
>(setup: (init: I) => LoadWorker<C, E, R>): void {
  const send = (m: FromLoadWorker<R>) => process.send?.(m)

  let init: I
  let w: LoadWorker<C, E, R>
  let running = false
  let measuring = false
  let hist: hdr.Histogram = latencyHistogram()
  const win = { acked: 0, readings: 0, samples: 0, sent: 0, bytes: 0, missed: 0, start: 0, cpu: process.cpuUsage() }
  let totalAcked = 0
  let totalSent = 0
  let closedDuringRun = 0
  const closeErrors: string[] = []
  const drain = new Drain()
  let inflightTotal = 0
  let stopPings: (() => void) | null = null
  let loop: OpenLoop<C> | null = null

  const out: Outbox<C, E> = {
    track(c, e) {
      let pid = c.nextPid
      while (c.inflight.has(pid)) pid = pid >= 65535 ? 1 : pid + 1
      c.nextPid = pid >= 65535 ? 1 : pid + 1
      c.inflight.set(pid, e)
      inflightTotal++
      totalSent++
      return pid
    },
    send(c, packet) {
      if (measuring) {
        win.sent++
        win.bytes += packet.length
      }
      ;(c.client as LiteClient).send(packet)
    },
  }
  const publish = (c: C) => w.publish(c, out)

  function onPuback(c: C, pid: number): void {
    const e = c.inflight.get(pid)
    if (!e) return
    c.inflight.delete(pid)
    inflightTotal--
    totalAcked++
    w.acked?.(c, e)
    if (measuring) {
      win.acked++
      win.readings += e.readings
      win.samples += e.samples
      hist.recordValue(Math.max(1, Math.round((performance.now() - e.sentAt) * 1000)))
    }
    if (running && c.client?.connected) {
      if (init.rate === 0) publish(c)
      else loop?.enqueue(c)
    }
    drain.settled(inflightTotal)
  }

  async function connectAll(): Promise<void> {
    const r = await connectRamp(w.conns, {
      host: init.host,
      port: init.port,
      mtls: w.mtls,
      caPath: init.caPath,
      rampPerSec: init.rampPerSec,
      keepaliveS: init.keepaliveS,
      onPuback,
      onClose: (c, err) => {
        if (running || drain.active) {
          closedDuringRun++
          if (closeErrors.length < 10) closeErrors.push(`${c.dev.deviceId}: ${err?.message ?? 'closed'}`)
        }
        // Nothing in flight on a closed connection will ever be acked: stop waiting for it.
        inflightTotal -= c.inflight.size
        drain.settled(inflightTotal)
      },
    })
    w.connected?.()
    send({ type: 'connected', ...r })
  }

  function start(): void {
    running = true
    const live = w.conns.filter((c) => c.client?.connected)
    stopPings = keepAlive(live, init.keepaliveS)
    if (init.rate === 0) {
      for (const c of live) for (let k = 0; k < init.inflight; k++) publish(c)
      return
    }
    // Open loop at the worker's rate (bench/lib/load-loop.ts).
    loop = new OpenLoop<C>(
      init.rate,
      (c) => c.inflight.size < init.inflight,
      publish,
      (n) => {
        if (measuring) win.missed += n
      },
    )
    loop.start(live)
  }

  function measure(on: boolean): void {
    if (on) {
      hist = latencyHistogram()
      Object.assign(win, {
        acked: 0,
        readings: 0,
        samples: 0,
        sent: 0,
        bytes: 0,
        missed: 0,
        start: performance.now(),
        cpu: process.cpuUsage(),
      })
      measuring = true
      return
    }
    measuring = false
    const cpu = process.cpuUsage(win.cpu)
    send({
      type: 'window',
      elapsedMs: performance.now() - win.start,
      ackedMsgs: win.acked,
      ackedReadings: win.readings,
      ackedSamples: win.samples,
      sentMsgs: win.sent,
      sentBytes: win.bytes,
      missed: win.missed,
      hist: encodeHistogram(hist),
      cpuMs: (cpu.user + cpu.system) / 1000,
    })
  }

  async function stop(drainTimeoutMs: number): Promise<void> {
    running = false
    loop?.stop()
    const drainMs = await drain.wait(inflightTotal, drainTimeoutMs)
    stopPings?.()
    send({
      type: 'final',
      devices: w.conns.map((c) => w.result(c)),
      ackedMsgs: totalAcked,
      sentMsgs: totalSent,
      closedDuringRun,
      closeErrors,
      drainMs,
    })
  }

  process.on('message', (m: ToLoadWorker<I>) => {
    switch (m.type) {
      case 'init':
        init = m as I
        w = setup(init)
        void connectAll()
        break
      case 'start':
        start()
        break
      case 'measure':
        measure(m.on)
        break
      case 'stop':
        void stop(m.drainTimeoutMs)
        break
      case 'exit':
        void Promise.all(w.conns.map((c) => c.client?.end())).then(() => process.exit(0))
        break
    }
  })
  exitWithParent()
}

/** The parent is gone (crashed, killed, or its output pipe closed): leave with it instead of holding connections open. */
export function exitWithParent(): void {
  process.on('disconnect', () => process.exit(0))
}
