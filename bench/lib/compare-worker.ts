// Load-generator process for bench/compare.ts (forked with an IPC channel; never run directly). It owns a slice of
// the swarm: one connection per simulated tracker (bench/lib/sim-model.ts), over mTLS with the device's own
// certificate or over plain TCP, opened at `rampPerSec`; then QoS 1 publishes of the devices' next readings batches
// with at most `inflight` unacknowledged per connection, as fast as PUBACKs return (rate 0) or at `rate` messages/s
// for this worker (the protocol and the load loop, shared with bench/lib/ingest-worker.ts:
// bench/lib/worker-protocol.ts). Payloads are produced on demand by the device model, identical for every broker; the
// cost of producing them is in the worker's CPU figure the parent reports.
import { publishPacket } from './mqtt-lite.js'
import { type SimBatch, SimDevice, type SimModelOptions } from './sim-model.js'
import {
  type FromLoadWorker,
  type InFlight,
  type LoadConn,
  type LoadWorkerInit,
  loadConn,
  runLoadWorker,
  type ToLoadWorker,
  type WorkerDevice,
} from './worker-protocol.js'

export interface CompareWorkerDevice extends WorkerDevice {
  /** position in the swarm: seeds the device model */
  index: number
}

/** With the device model's settings (scenario, format, batch, intervalMs, tStartMs, seed: sim-model.ts). */
export interface CompareWorkerInit extends LoadWorkerInit<CompareWorkerDevice>, SimModelOptions {
  /** 'mtls': TLS with the device certificate (server verified against caPath); 'tcp': plain MQTT */
  transport: 'mtls' | 'tcp'
  /**
   * 0: every message is the device's next batch, made on demand (what a storing broker needs: new seq, new times).
   * K > 0: each device's first K batches are made before the load starts and then sent round and round, so the
   * generator spends its CPU on the transport only (for brokers that do not read payloads; see bench/compare.ts).
   */
  replayBatches: number
}

export type ToCompareWorker = ToLoadWorker<CompareWorkerInit>

/** Acknowledged time ranges of one device: [t0, t1] per run of consecutive acked batches (sample times, ms). */
export interface CompareDeviceResult {
  deviceId: string
  sent: number
  ackedReadings: number
  ranges: [number, number][]
  /** virtual clock at the end: must not be in the future */
  clockMs: number
}

export type FromCompareWorker = FromLoadWorker<CompareDeviceResult>

interface Sent extends InFlight {
  seq: number
  t0: number
  t1: number
}

interface Conn extends LoadConn<CompareWorkerDevice, Sent> {
  model: SimDevice
  /** replay mode: the device's first K batches, sent in turn */
  pool: SimBatch[]
  poolNext: number
  sent: number
  /** acked batches by seq, until they join the run that ends just before them (acks may come out of order) */
  ackedAhead: Map<number, Sent>
  /** the acked range of batches 1…runNextSeq − 1 (at most one entry) */
  ranges: [number, number][]
  runNextSeq: number
  ackedReadings: number
}

/**
 * Joins an acked batch to the device's acknowledged time range. Batches are contiguous in sample time, so the acked
 * batches 1…k form one range; an ack ahead of a missing one waits in `ackedAhead` (at the end, ranges of its own).
 */
function recordAck(c: Conn, e: Sent): void {
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

runLoadWorker<CompareWorkerInit, CompareWorkerDevice, Sent, Conn, CompareDeviceResult>((init) => {
  const conns: Conn[] = init.devices.map((dev) => ({
    ...loadConn<CompareWorkerDevice, Sent>(dev),
    model: new SimDevice(dev.deviceId, dev.index, init),
    pool: [],
    poolNext: 0,
    sent: 0,
    ackedAhead: new Map(),
    ranges: [],
    runNextSeq: 1,
    ackedReadings: 0,
  }))
  return {
    mtls: init.transport === 'mtls',
    conns,
    publish(c, out) {
      let b: SimBatch
      if (c.pool.length > 0) {
        b = c.pool[c.poolNext] as SimBatch
        c.poolNext = (c.poolNext + 1) % c.pool.length
      } else b = c.model.next()
      const pid = out.track(c, {
        seq: b.seq,
        sentAt: performance.now(),
        readings: b.readings,
        samples: b.samples,
        t0: b.t0,
        t1: b.t1,
      })
      c.sent++
      out.send(c, publishPacket(c.topic, pid, b.payload))
    },
    acked: recordAck,
    // Made now, not during the measured window.
    connected() {
      for (const c of conns) for (let k = 0; k < init.replayBatches; k++) c.pool.push(c.model.next())
    },
    result(c) {
      // Acked batches still waiting for an earlier one that never came back: their own ranges.
      const ahead = [...c.ackedAhead.values()].sort((x, y) => x.seq - y.seq).map((e): [number, number] => [e.t0, e.t1])
      return {
        deviceId: c.dev.deviceId,
        sent: c.sent,
        ackedReadings: c.ackedReadings,
        ranges: [...c.ranges, ...ahead],
        clockMs: c.model.clockMs,
      }
    },
  }
})
