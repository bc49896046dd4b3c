// Load-generator process for bench/ingest.ts (forked with an IPC channel; never run directly). It owns a slice of the
// devices: connects them over mTLS at the requested ramp, then publishes QoS 1 readings batches with at most
// `inflight` unacknowledged per connection, either as fast as PUBACKs allow (rate 0) or at `rate` messages/s in total
// for this worker. Timestamps are unique per device: sample k of batch seq has t = tBase + (seq − 1)·batch + k, so
// every acknowledged batch maps to a known time range that the parent checks in the database.
import { encode as cborEncode } from 'cbor-x'
import type * as hdr from 'hdr-histogram-js'
import { connectRamp, Drain, keepAlive, OpenLoop } from './load-loop.js'
import type { LiteClient } from './mqtt-lite.js'
import { publishPacket, topicBytes } from './mqtt-lite.js'
import { encodeHistogram, latencyHistogram } from './stats.js'

export interface WorkerDevice {
  deviceId: string
  certPath: string
  keyPath: string
}

export interface IngestWorkerInit {
  type: 'init'
  host: string
  port: number
  caPath: string
  devices: WorkerDevice[]
  batch: number
  inflight: number
  format: 'cbor' | 'json'
  /** messages/s for this worker; 0 = as fast as acks come back */
  rate: number
  /** new connections per second for this worker */
  rampPerSec: number
  tBase: number
  keepaliveS: number
}

export type ToWorker =
  | IngestWorkerInit
  | { type: 'start' }
  | { type: 'measure'; on: boolean }
  | { type: 'stop'; drainTimeoutMs: number }
  | { type: 'exit' }

export interface WindowReport {
  type: 'window'
  elapsedMs: number
  ackedMsgs: number
  ackedSamples: number
  sentMsgs: number
  /** rate mode: messages the schedule wanted but no connection had window room for (or that were too late) */
  missed: number
  hist: string
  cpuMs: number
}

export interface DeviceResult {
  deviceId: string
  /** batches sent: seq 1…sent */
  sent: number
  /** seqs sent but never acknowledged (connection lost, or not acked before the drain timeout) */
  unacked: number[]
}

export type FromWorker =
  | { type: 'connected'; ok: number; failed: number; errors: string[]; hist: string; elapsedMs: number }
  | WindowReport
  | {
      type: 'final'
      devices: DeviceResult[]
      ackedMsgs: number
      sentMsgs: number
      closedDuringRun: number
      closeErrors: string[]
      drainMs: number
    }

interface Conn {
  dev: WorkerDevice
  client: LiteClient | null
  topic: Buffer
  seq: number
  nextPid: number
  /** packet id → [seq, sent at (performance.now)] */
  inflight: Map<number, [number, number]>
  /** rate mode: in the ready FIFO (has window room) */
  queued: boolean
}

const send = (m: FromWorker) => process.send?.(m)

let init: IngestWorkerInit
let conns: Conn[] = []
let running = false
let measuring = false
let hist: hdr.Histogram = latencyHistogram()
let winAcked = 0
let winSamples = 0
let winSent = 0
let winMissed = 0
let winStart = 0
let winCpu = process.cpuUsage()
let totalAcked = 0
let totalSent = 0
let closedDuringRun = 0
const closeErrors: string[] = []
const drain = new Drain()
let inflightTotal = 0

function payloadFor(seq: number): Uint8Array {
  const n = init.batch
  const t0 = init.tBase + (seq - 1) * n
  const samples = new Array<{ t: number; hr: number }>(n)
  for (let k = 0; k < n; k++) samples[k] = { t: t0 + k, hr: 60 + ((seq + k) % 120) }
  const batch = { seq, samples }
  return init.format === 'cbor' ? cborEncode(batch) : Buffer.from(JSON.stringify(batch))
}

function publish(c: Conn): void {
  const client = c.client as LiteClient
  const seq = c.seq++
  let pid = c.nextPid
  c.nextPid = pid >= 65535 ? 1 : pid + 1
  while (c.inflight.has(pid)) {
    pid = c.nextPid
    c.nextPid = pid >= 65535 ? 1 : pid + 1
  }
  c.inflight.set(pid, [seq, performance.now()])
  inflightTotal++
  totalSent++
  if (measuring) winSent++
  client.send(publishPacket(c.topic, pid, payloadFor(seq)))
}

function onPuback(c: Conn, pid: number): void {
  const e = c.inflight.get(pid)
  if (!e) return
  c.inflight.delete(pid)
  inflightTotal--
  totalAcked++
  if (measuring) {
    winAcked++
    winSamples += init.batch
    const us = Math.max(1, Math.round((performance.now() - e[1]) * 1000))
    hist.recordValue(us)
  }
  if (running && c.client?.connected) {
    if (init.rate === 0) publish(c)
    else loop?.enqueue(c)
  }
  drain.settled(inflightTotal)
}

async function connectAll(): Promise<void> {
  conns = init.devices.map((dev) => ({
    dev,
    client: null,
    topic: topicBytes(`devices/${dev.deviceId}/readings`),
    seq: 1,
    nextPid: 1,
    inflight: new Map(),
    queued: false,
  }))
  const r = await connectRamp(conns, {
    host: init.host,
    port: init.port,
    mtls: true,
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
  send({ type: 'connected', ...r })
}

let stopPings: (() => void) | null = null
let loop: OpenLoop<Conn> | null = null

function start(): void {
  running = true
  const live = conns.filter((c) => c.client?.connected)
  stopPings = keepAlive(live, init.keepaliveS)
  if (init.rate === 0) {
    for (const c of live) for (let k = 0; k < init.inflight; k++) publish(c)
    return
  }
  loop = new OpenLoop<Conn>(
    init.rate,
    (c) => c.inflight.size < init.inflight,
    publish,
    (n) => {
      if (measuring) winMissed += n
    },
  )
  loop.start(live)
}

async function stop(drainTimeoutMs: number): Promise<void> {
  running = false
  loop?.stop()
  const drainMs = await drain.wait(inflightTotal, drainTimeoutMs)
  stopPings?.()
  const devices: DeviceResult[] = conns.map((c) => ({
    deviceId: c.dev.deviceId,
    sent: c.seq - 1,
    unacked: [...c.inflight.values()].map(([seq]) => seq).sort((a, b) => a - b),
  }))
  send({ type: 'final', devices, ackedMsgs: totalAcked, sentMsgs: totalSent, closedDuringRun, closeErrors, drainMs })
}

process.on('message', (m: ToWorker) => {
  switch (m.type) {
    case 'init':
      init = m
      void connectAll()
      break
    case 'start':
      start()
      break
    case 'measure':
      if (m.on) {
        hist = latencyHistogram()
        winAcked = 0
        winSamples = 0
        winSent = 0
        winMissed = 0
        winStart = performance.now()
        winCpu = process.cpuUsage()
        measuring = true
      } else {
        measuring = false
        const cpu = process.cpuUsage(winCpu)
        send({
          type: 'window',
          elapsedMs: performance.now() - winStart,
          ackedMsgs: winAcked,
          ackedSamples: winSamples,
          sentMsgs: winSent,
          missed: winMissed,
          hist: encodeHistogram(hist),
          cpuMs: (cpu.user + cpu.system) / 1000,
        })
      }
      break
    case 'stop':
      void stop(m.drainTimeoutMs)
      break
    case 'exit':
      void Promise.all(conns.map((c) => c.client?.end())).then(() => process.exit(0))
      break
  }
})

// The parent is gone (crashed, killed, or its output pipe closed): leave with it instead of holding connections open.
process.on('disconnect', () => process.exit(0))
