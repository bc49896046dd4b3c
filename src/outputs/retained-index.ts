// Retained messages (live snapshots, leaderboards, device config) are found by exact topic. Aedes' in-memory
// persistence answers every SUBSCRIBE by testing each stored retained message against the filter: with 10,000 users
// that is O(retained) per subscription, O(n²) over a race start, and was ~11 % of the broker's CPU in the 10k-device
// run. Exact-topic filters (all that non-admins may use) are answered from a Map here; wildcard filters (admins) still
// go to the original scan.
import { Readable } from 'node:stream'

export interface RetainedPacket {
  topic: string
  payload: Buffer | string
}

export interface RetainedPersistence {
  storeRetained(packet: RetainedPacket): Promise<void>
  createRetainedStreamCombi(patterns: string[]): Readable
}

/** Wraps the persistence in place; call before any retained message is stored. */
export function indexRetained(persistence: RetainedPersistence): void {
  const byTopic = new Map<string, RetainedPacket>()
  const store = persistence.storeRetained.bind(persistence)
  const scan = persistence.createRetainedStreamCombi.bind(persistence)
  persistence.storeRetained = async (packet) => {
    await store(packet)
    // Same rule as the persistence: an empty payload clears the topic. A copy, as the persistence keeps one.
    if (packet.payload.length === 0) byTopic.delete(packet.topic)
    else byTopic.set(packet.topic, { ...packet })
  }
  persistence.createRetainedStreamCombi = (patterns) => {
    if (patterns.some((p) => p.includes('+') || p.includes('#'))) return scan(patterns)
    const found: RetainedPacket[] = []
    for (const p of patterns) {
      const packet = byTopic.get(p)
      if (packet) found.push(packet)
    }
    return Readable.from(found)
  }
}
