// Load-generator process for bench/compare.ts (forked with an IPC channel; never run directly). It owns a slice of
// the swarm: one connection per simulated tracker (bench/lib/sim-model.ts), over mTLS with the device's own
// certificate or over plain TCP, opened at `rampPerSec`; then QoS 1 publishes of the devices' next readings batches
// with at most `inflight` unacknowledged per connection, as fast as PUBACKs return (rate 0) or at `rate` messages/s
// for this worker (open loop, as bench/lib/ingest-worker.ts). Payloads are produced on demand by the device model,
// identical for every broker; the cost of producing them is in the worker's CPU figure the parent reports.
import type * as hdr from 'hdr-histogram-js'
import type { Format, Scenario } from '../../simulators/protocol.js'
import { connectRamp, Drain, keepAlive, OpenLoop } from './load-loop.js'
import { type LiteClient, publishPacket, topicBytes } from './mqtt-lite.js'
import { type SimBatch, SimDevice } from './sim-model.js'
import { encodeHistogram, latencyHistogram } from './stats.js'

export interface CompareWorkerDevice {
  deviceId: string
  /** position in the swarm: seeds the device model */
  index: number
  certPath: string
  keyPath: string
}

export interface CompareWorkerInit {
  type: 'init'
  host: string
  port: number
  /** 'mtls': TLS with the device certificate (server verified against caPath); 'tcp': plain MQTT */
  transport: 'mtls' | 'tcp'
  caPath: string
  devices: CompareWorkerDevice[]
  scenario: Scenario
  format: Format
  batch: number
  intervalMs: number
  tStartMs: number
  seed: number
  inflight: number
  /** messages/s for this worker; 0 = as fast as acks come back */
  rate: number
  rampPerSec: number
  keepaliveS: number
  /**
   * 0: every message is the device's next batch, made on demand (what a storing broker needs: new seq, new times).
   * K > 0: each device's first K batches are made before the load starts and then sent round and round, so the
   * generator spends its CPU on the transport only (for brokers that do not read payloads; see bench/compare.ts).
   */
  replayBatches: number
}

export type ToCompareWorker =
  | CompareWorkerInit
  | { type: 'start' }
  | { type: 'measure'; on: boolean }
  | { type: 'stop'; drainTimeoutMs: number }
  | { type: 'exit' }

export interface CompareWindow {
  type: 'window'
  elapsedMs: number
  ackedMsgs: number
  ackedReadings: number
  ackedSamples: number
  sentMsgs: number
  sentBytes: number
  missed: number
  hist: string
  cpuMs: number
}

/** Acknowledged time ranges of one device: [t0, t1] per run of consecutive acked batches (sample times, ms). */
export interface CompareDeviceResult {
  deviceId: string
  sent: number
  ackedReadings: number
  ranges: [number, number][]
  /** virtual clock at the end: must not be in the future */
  clockMs: number
}

export type FromCompareWorker =
  | { type: 'connected'; ok: number; failed: number; errors: string[]; hist: string; elapsedMs: number }
  | CompareWindow
  | {
      type: 'final'
      devices: CompareDeviceResult[]
      ackedMsgs: number
      sentMsgs: number
      closedDuringRun: number
      closeErrors: string[]
      drainMs: number
    }

interface InFlight {
  seq: number
  sentAt: number
  readings: number
  samples: number
  t0: number
  t1: number
}

interface Conn {
  dev: CompareWorkerDevice
  model: SimDevice
  /** replay mode: the device's first K batches, sent in turn */
  pool: SimBatch[]
  poolNext: number
  client: LiteClient | null
  topic: Buffer
  sent: number
  nextPid: number
  inflight: Map<number, InFlight>
  /** acked batches by seq, until they join the run that ends just before them (acks may come out of order) */
  ackedAhead: Map<number, InFlight>
  /** the acked range of batches 1…runNextSeq − 1 (at most one entry) */
  ranges: [number, number][]
  runNextSeq: number
  ackedReadings: number
  queued: boolean
}

const send = (m: FromCompareWorker) => process.send?.(m)

let init: CompareWorkerInit
let conns: Conn[] = []
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

function publish(c: Conn): void {
  let b: SimBatch
  if (c.pool.length > 0) {
    b = c.pool[c.poolNext] as SimBatch
    c.poolNext = (c.poolNext + 1) % c.pool.length
  } else b = c.model.next()
  let pid = c.nextPid
  while (c.inflight.has(pid)) pid = pid >= 65535 ? 1 : pid + 1
  c.nextPid = pid >= 65535 ? 1 : pid + 1
  c.inflight.set(pid, {
    seq: b.seq,
    sentAt: performance.now(),
    readings: b.readings,
    samples: b.samples,
    t0: b.t0,
    t1: b.t1,
  })
  c.sent++
  inflightTotal++
  totalSent++
  const packet = publishPacket(c.topic, pid, b.payload)
  if (measuring) {
    win.sent++
    win.bytes += packet.length
  }
  ;(c.client as LiteClient).send(packet)
}

/**
 * Joins an acked batch to the device's acknowledged time range. Batches are contiguous in sample time, so the acked
 * batches 1…k form one range; an ack ahead of a missing one waits in `ackedAhead` (at the end, ranges of its own).
 */
function recordAck(c: Conn, e: InFlight): void {
  c.ackedReadings += e.readings
  // Replayed batches repeat their seqs and times: there is no range to verify (nor a database to verify it in).
  if (c.pool.length > 0) return
  c.ackedAhead.set(e.seq, e)
  for (let next = c.ackedAhead.get(c.runNextSeq); next; next = c.ackedAhead.get(c.runNextSeq)) {
    c.ackedAhead.delete(c.runNextSeq)
    const open = c.ranges[0]
    if (open) open[1] = next.t1
    else c.ranges.push([next.t0, next.t1])
    c.runNextSeq++
  }
}

function onPuback(c: Conn, pid: number): void {
  const e = c.inflight.get(pid)
  if (!e) return
  c.inflight.delete(pid)
  inflightTotal--
  totalAcked++
  recordAck(c, e)
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
  const model = {
    scenario: init.scenario,
    format: init.format,
    batch: init.batch,
    intervalMs: init.intervalMs,
    tStartMs: init.tStartMs,
    seed: init.seed,
  }
  conns = init.devices.map((dev) => ({
    dev,
    model: new SimDevice(dev.deviceId, dev.index, model),
    pool: [],
    poolNext: 0,
    client: null,
    topic: topicBytes(`devices/${dev.deviceId}/readings`),
    sent: 0,
    nextPid: 1,
    inflight: new Map(),
    ackedAhead: new Map(),
    ranges: [],
    runNextSeq: 1,
    ackedReadings: 0,
    queued: false,
  }))
  const r = await connectRamp(conns, {
    host: init.host,
    port: init.port,
    mtls: init.transport === 'mtls',
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
  // Made now, not during the measured window.
  for (const c of conns) for (let k = 0; k < init.replayBatches; k++) c.pool.push(c.model.next())
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
  // Open loop at the worker's rate (bench/lib/load-loop.ts).
  loop = new OpenLoop<Conn>(
    init.rate,
    (c) => c.inflight.size < init.inflight,
    publish,
    (n) => {
      if (measuring) win.missed += n
    },
  )
  loop.start(live)
}

async function stop(drainTimeoutMs: number): Promise<void> {
  running = false
  loop?.stop()
  const drainMs = await drain.wait(inflightTotal, drainTimeoutMs)
  stopPings?.()
  const devices: CompareDeviceResult[] = conns.map((c) => {
    // Acked batches still waiting for an earlier one that never came back: their own ranges.
    const ahead = [...c.ackedAhead.values()].sort((x, y) => x.seq - y.seq).map((e): [number, number] => [e.t0, e.t1])
    return {
      deviceId: c.dev.deviceId,
      sent: c.sent,
      ackedReadings: c.ackedReadings,
      ranges: [...c.ranges, ...ahead],
      clockMs: c.model.clockMs,
    }
  })
  send({
    type: 'final',
    devices,
    ackedMsgs: totalAcked,
    sentMsgs: totalSent,
    closedDuringRun,
    closeErrors,
    drainMs,
  })
}

process.on('message', (m: ToCompareWorker) => {
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
      } else {
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
