// Load-generator process for bench/ingest.ts (forked with an IPC channel; never run directly). It owns a slice of the
// devices: connects them over mTLS at the requested ramp, then publishes QoS 1 readings batches with at most
// `inflight` unacknowledged per connection, either as fast as PUBACKs allow (rate 0) or at `rate` messages/s in total
// for this worker (the protocol and the load loop: bench/lib/worker-protocol.ts). Timestamps are unique per device:
// sample k of batch seq has t = tBase + (seq − 1)·batch + k, so every acknowledged batch maps to a known time range
// that the parent checks in the database.
import { encode as cborEncode } from 'cbor-x'
import { publishPacket } from './mqtt-lite.js'
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

export interface IngestWorkerInit extends LoadWorkerInit {
  batch: number
  format: 'cbor' | 'json'
  tBase: number
}

export interface DeviceResult {
  deviceId: string
  /** batches sent: seq 1…sent */
  sent: number
  /** seqs sent but never acknowledged (connection lost, or not acked before the drain timeout) */
  unacked: number[]
}

export type ToWorker = ToLoadWorker<IngestWorkerInit>
export type FromWorker = FromLoadWorker<DeviceResult>

/** A batch in flight: its seq; every sample is one reading (heart rate only). */
interface Sent extends InFlight {
  seq: number
}

interface Conn extends LoadConn<WorkerDevice, Sent> {
  /** the next batch's seq */
  seq: number
}

runLoadWorker<IngestWorkerInit, WorkerDevice, Sent, Conn, DeviceResult>((init) => {
  const n = init.batch
  const payloadFor = (seq: number): Uint8Array => {
    const t0 = init.tBase + (seq - 1) * n
    const samples = new Array<{ t: number; hr: number }>(n)
    for (let k = 0; k < n; k++) samples[k] = { t: t0 + k, hr: 60 + ((seq + k) % 120) }
    const batch = { seq, samples }
    return init.format === 'cbor' ? cborEncode(batch) : Buffer.from(JSON.stringify(batch))
  }
  return {
    mtls: true,
    conns: init.devices.map((dev) => ({ ...loadConn<WorkerDevice, Sent>(dev), seq: 1 })),
    publish(c, out) {
      const seq = c.seq++
      // Timed from before the encoding: the latency includes making the payload.
      const pid = out.track(c, { seq, sentAt: performance.now(), samples: n, readings: n })
      out.send(c, publishPacket(c.topic, pid, payloadFor(seq)))
    },
    result: (c) => ({
      deviceId: c.dev.deviceId,
      sent: c.seq - 1,
      unacked: [...c.inflight.values()].map((e) => e.seq).sort((a, b) => a - b),
    }),
  }
})
