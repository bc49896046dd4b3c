// The fast guard in front of the database's unique key: a redelivered batch (QoS 1 DUP, or a retry after a refused
// ack) with the same seq AND the same bytes as one already committed is acknowledged without touching the database.
// Keyed on content too, so a device whose seq counter restarts after a reset never has new samples mistaken for old.
const WINDOW = 8

/**
 * A 53-bit non-cryptographic hash of the payload (cyrb53: two 32-bit multiply-xorshift lanes). A false match needs the
 * same device, the same seq within the last 8 batches AND equal hashes, and this is not a security boundary (a device
 * can only fool itself), so SHA-1's strength buys nothing: this is ~8× cheaper (0.17 µs vs 1.4 µs for 120 bytes) and
 * allocates nothing, on the hottest path of the broker.
 */
export function payloadHash(payload: Uint8Array): number {
  let h1 = 0xdeadbeef
  let h2 = 0x41c6ce57
  for (let i = 0; i < payload.length; i++) {
    const c = payload[i] as number
    h1 = Math.imul(h1 ^ c, 2654435761)
    h2 = Math.imul(h2 ^ c, 1597334677)
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507)
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909)
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507)
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909)
  return 4294967296 * (2097151 & h2) + (h1 >>> 0)
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

  forget(deviceKey: number): void {
    this.byDevice.delete(deviceKey)
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
