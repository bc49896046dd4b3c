// The fast guard in front of the database's unique key: a redelivered batch (QoS 1 DUP, or a retry after a refused
// ack) with the same seq AND the same bytes as one already committed is acknowledged without touching the database.
// Keyed on content too, so a device whose seq counter restarts after a reset never has new samples mistaken for old.
import crypto from 'node:crypto'

const WINDOW = 8

export function payloadHash(payload: Buffer): number {
  // 48 bits of SHA-1: collisions need the same device and seq as well, so this is ample.
  return crypto.createHash('sha1').update(payload).digest().readUIntBE(0, 6)
}

export class SeqWindow {
  private readonly byDevice = new Map<number, Float64Array>()

  constructor(private readonly maxDevices = 500_000) {}

  /** seq+hash pairs in a ring of WINDOW entries, plus the write index at the end */
  seen(deviceKey: number, seq: number, hash: number): boolean {
    const ring = this.byDevice.get(deviceKey)
    if (!ring) return false
    for (let i = 0; i < WINDOW; i++) {
      if (ring[i * 2] === seq && ring[i * 2 + 1] === hash) return true
    }
    return false
  }

  /** Call only after the batch's rows are committed. */
  record(deviceKey: number, seq: number, hash: number): void {
    let ring = this.byDevice.get(deviceKey)
    if (!ring) {
      if (this.byDevice.size >= this.maxDevices) this.byDevice.clear() // a cache: forgetting only costs a DB round trip
      ring = new Float64Array(WINDOW * 2 + 1).fill(-1)
      ring[WINDOW * 2] = 0
      this.byDevice.set(deviceKey, ring)
    }
    const at = ring[WINDOW * 2] as number
    ring[at * 2] = seq
    ring[at * 2 + 1] = hash
    ring[WINDOW * 2] = (at + 1) % WINDOW
  }
}
