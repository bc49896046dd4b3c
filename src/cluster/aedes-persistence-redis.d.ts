// aedes-persistence-redis 12 ships no types; this is the part pulsegate uses (src/cluster/aedes-redis.ts).
declare module 'aedes-persistence-redis' {
  import type { Cluster, Redis, RedisOptions } from 'ioredis'

  interface PersistenceRedisOptions extends RedisOptions {
    conn?: Redis | Cluster
    cluster?: boolean | { host: string; port: number }[]
    maxSessionDelivery?: number
    /** seconds an offline/in-flight packet is kept; 0 = forever */
    packetTTL?: (packet: { topic: string; qos: number }) => number
  }

  function persistenceRedis(opts?: PersistenceRedisOptions): unknown
  export default persistenceRedis
}
