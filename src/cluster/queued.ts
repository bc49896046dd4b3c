// Erasure on Redis sessions (src/ops/erase-live.ts removeQueued): aedes-persistence-redis hands out decoded copies of
// queued packets and clears one only by a message id it remembers in process, so the in-memory way of removing a
// queued packet finds nothing. This removes the picked packets from the client's queue list directly, and the packet
// itself once no other queue refers to it (the same bookkeeping the persistence does on a PUBACK).
import type { Redis } from 'ioredis'
import type { QueuedPacket } from '../ops/erase-live.js'

interface QueuePersistence {
  outgoingStream(client: { id: string }): AsyncIterable<unknown>
  removeQueued?: (client: { id: string }, match: (pkt: QueuedPacket) => boolean) => Promise<number>
}

interface StoredPacket extends QueuedPacket {
  brokerId?: string
  brokerCounter?: number
}

export function removableQueues(persistence: QueuePersistence, sessions: Redis): void {
  persistence.removeQueued = async (client, match) => {
    const list = `outgoing:${encodeURIComponent(client.id)}`
    let removed = 0
    for await (const item of persistence.outgoingStream(client)) {
      const pkt = item as StoredPacket
      if (pkt.brokerId === undefined || pkt.brokerCounter === undefined || !match(pkt)) continue
      const key = `packet:${pkt.brokerId}:${pkt.brokerCounter}`
      const n = await sessions.lrem(list, 0, key)
      if (n === 0) continue
      removed += n
      if ((await sessions.decrby(`${key}:offlineCount`, n)) <= 0) await sessions.del(key, `${key}:offlineCount`)
    }
    return removed
  }
}
