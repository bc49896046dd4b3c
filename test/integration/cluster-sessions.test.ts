// The session janitor of cluster mode on a real Redis (one broker in this process is enough: the sessions, the
// last-seen marks and the janitor's lease are all in Redis). A persistent session left idle longer than
// cluster.sessionIdleMs is removed; one still connected is kept, however long it has been connected.
import { Redis } from 'ioredis'
import mqtt from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { connectWithToken, REDIS_URL, type TestBroker, startTestBroker, token, waitFor } from '../helpers/harness.js'

let tb: TestBroker
let redis: Redis
let keys: string

beforeAll(async () => {
  tb = await startTestBroker('postgres', {
    redisUrl: REDIS_URL,
    cluster: { sessionIdleMs: 2500, janitorIntervalMs: 1000 },
  })
  const cfg = tb.pg.config.cluster
  redis = new Redis(REDIS_URL, { db: cfg.redisDb })
  keys = `${cfg.prefix}:s:`
}, 60_000)

afterAll(async () => {
  await tb?.stop() // also deletes the run's Redis keys
  await redis?.quit()
})

describe('cluster: abandoned persistent sessions', () => {
  it('removes a session idle past the limit and keeps a connected one', async () => {
    const gone = await connectWithToken(tb, await token(tb, 'jgone', 'app'), 'app:jgone', 'tcp', { clean: false })
    await gone.subscribeAsync('users/jgone/alerts', { qos: 1 })
    const stays = await connectWithToken(tb, await token(tb, 'jstay', 'app'), 'app:jstay', 'tcp', { clean: false })
    await stays.subscribeAsync('users/jstay/alerts', { qos: 1 })
    await gone.endAsync()
    expect(await redis.sismember(`${keys}clients`, 'app:jgone')).toBe(1)

    await waitFor(async () => (await redis.sismember(`${keys}clients`, 'app:jgone')) === 0, 60_000)
    expect(await redis.exists(`${keys}client:app:jgone`)).toBe(0)
    // The idle session is gone for good: a reconnect starts a new one.
    const jwt = await token(tb, 'jgone', 'app')
    const again = mqtt.connect(`mqtt://127.0.0.1:${tb.pg.ports.mqtt}`, {
      clientId: 'app:jgone',
      username: 'jwt',
      password: jwt,
      clean: false,
      reconnectPeriod: 0,
      protocolVersion: 4,
    })
    const connack = await new Promise<{ sessionPresent: boolean }>((resolve, reject) => {
      again.once('connect', resolve)
      again.once('error', reject)
    })
    expect(connack.sessionPresent).toBe(false)
    // The connected one was marked seen at every round, so it survived them all.
    expect(await redis.sismember(`${keys}clients`, 'app:jstay')).toBe(1)
    await Promise.all([again.endAsync(), stays.endAsync()])
  })
})
