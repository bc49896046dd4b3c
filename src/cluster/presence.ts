// App presence across the nodes, for the webhook output (src/outputs/webhook/presence.ts): one sorted set per user,
// `{prefix}:presence:{userId}`, member = node (its lease identity), score = until when the entry holds. A node adds
// itself when the user's first app connects to it, removes itself when the last one leaves, and refreshes its entries
// every third of the TTL; a node that dies stops refreshing, and its entries lapse within the TTL. Asked only before
// a push goes out (alerts and recommendations for users without an app here): no Redis work per reading.
import type { Redis } from 'ioredis'
import type { Logger } from '../log.js'
import type { AppPresence } from '../outputs/webhook/presence.js'

export interface SharedPresence {
  stop(): Promise<void>
}

export function sharePresence(
  presence: AppPresence,
  redis: Redis,
  prefix: string,
  self: string,
  log: Logger,
  ttlMs = 15_000,
): SharedPresence {
  const key = (userId: string) => `${prefix}:presence:${userId}`
  const add = (p: ReturnType<Redis['pipeline']>, userId: string) =>
    p.zadd(key(userId), Date.now() + ttlMs, self).pexpire(key(userId), 2 * ttlMs)
  const failed = (err: Error) => log.warn({ err: err.message }, 'cluster presence: Redis write failed')
  presence.onChange((userId, present) => {
    const p = redis.pipeline()
    if (present) add(p, userId)
    else p.zrem(key(userId), self)
    p.exec().catch(failed)
  })
  const refresh = setInterval(() => {
    const p = redis.pipeline()
    let n = 0
    for (const userId of presence.users()) {
      add(p, userId)
      n++
    }
    if (n > 0) p.exec().catch(failed)
  }, ttlMs / 3)
  refresh.unref()
  // Another node's entry that still holds; this node's own apps are known without asking.
  presence.remote = async (userId) => {
    const nodes = await redis.zrangebyscore(key(userId), Date.now(), '+inf')
    return nodes.some((n) => n !== self)
  }
  return {
    async stop() {
      clearInterval(refresh)
      presence.remote = null
      const p = redis.pipeline()
      for (const userId of presence.users()) p.zrem(key(userId), self)
      await p.exec().catch(failed)
    },
  }
}
