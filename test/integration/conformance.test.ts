// MQTT 3.1.1 conformance points the hooks decide, each checked with a raw client (test/helpers/raw-mqtt.ts) writing
// exactly the packets under test: zero-byte client ids [MQTT-3.1.3-6..8], wildcards and `$` topics [MQTT-4.7.2-1],
// keep-alive at 1.5× [MQTT-3.1.2-24], and a refused filter answered 0x80 in its own slot of the SUBACK [MQTT-3.9.3].
import type { Client } from 'aedes'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  connectWithToken,
  provisionDevice,
  startTestBroker,
  type TestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { RawMqtt } from '../helpers/raw-mqtt.js'

describe('MQTT 3.1.1 conformance', () => {
  let tb: TestBroker
  const open: RawMqtt[] = []
  const raw = async (tlsCreds?: { cert: string; key: string }) => {
    const r = await RawMqtt.open(
      tlsCreds
        ? { port: tb.pg.ports.mqtts as number, tls: { ...tlsCreds, ca: tb.ca } }
        : { port: tb.pg.ports.mqtt as number },
    )
    open.push(r)
    return r
  }
  const connectedIds = () =>
    Object.keys((tb.pg.broker as unknown as { clients: Record<string, Client | undefined> }).clients)
  const metric = async (name: string) => {
    const m = (await tb.pg.metrics.registry.getMetricsAsJSON()).find((x) => x.name === name)
    return (m?.values ?? []).reduce((s, v) => s + v.value, 0)
  }

  beforeAll(async () => {
    tb = await startTestBroker('postgres')
  }, 120_000)
  afterAll(async () => {
    for (const r of open) r.end()
    await tb?.stop()
  }, 90_000)

  it('a zero-byte client id with CleanSession=1: CONNACK 0 and a unique id in the principal namespace', async () => {
    const jwt = await token(tb, 'zed', 'app')
    const a = await raw()
    const b = await raw()
    a.connect({ clientId: '', clean: true, password: jwt })
    b.connect({ clientId: '', clean: true, password: jwt })
    expect((await a.next('connack')).returnCode).toBe(0)
    expect((await b.next('connack')).returnCode).toBe(0)
    // Two ids, both in app:zed's namespace, both connected: neither took the other's session over.
    const ids = await waitFor(() => {
      const mine = connectedIds().filter((id) => id.startsWith('app:zed:'))
      return mine.length === 2 ? mine : null
    }, 30_000)
    expect(new Set(ids).size).toBe(2)
    expect(a.closedAt).toBeNull()
    expect(b.closedAt).toBeNull()
    // The assigned id carries the principal: the app may subscribe to its own alerts.
    a.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'users/zed/alerts', qos: 1 }] })
    expect((await a.next('suback')).granted).toEqual([1])
  }, 90_000)

  it('a device with a zero-byte client id is given its device id', async () => {
    const dev = await provisionDevice(tb, 'zero-id-tracker', 'zoe')
    const r = await raw({ cert: dev.cert, key: dev.key })
    r.connect({ clientId: '', clean: true })
    expect((await r.next('connack')).returnCode).toBe(0)
    await waitFor(() => connectedIds().includes('zero-id-tracker'), 30_000)
  }, 90_000)

  it('a zero-byte client id with CleanSession=0: CONNACK 2 and the connection closed', async () => {
    const r = await raw()
    r.connect({ clientId: '', clean: false, password: await token(tb, 'zed', 'app') })
    expect((await r.next('connack')).returnCode).toBe(2)
    await r.closed()
  }, 90_000)

  it('wildcard filters never match $ topics; $SYS/# does', async () => {
    const ops = await token(tb, 'ops', 'admin')
    const wild = await connectWithToken(tb, ops, 'admin:ops:wild')
    const sys = await connectWithToken(tb, ops, 'admin:ops:sys')
    const seenByWild: string[] = []
    wild.on('message', (t) => seenByWild.push(t))
    await wild.subscribeAsync(['#', '+/+/new/clients', '+/#'], { qos: 0 })
    const sysTopics: string[] = []
    sys.on('message', (t, payload) => {
      if (payload.toString().includes('app:zed:dollar')) sysTopics.push(t)
    })
    await sys.subscribeAsync('$SYS/#', { qos: 0 })
    // A connect makes the broker publish $SYS/<id>/new/clients.
    const other = await connectWithToken(tb, await token(tb, 'zed', 'app'), 'app:zed:dollar')
    await waitFor(() => sysTopics.some((t) => t.endsWith('/new/clients')), 30_000)
    // A sentinel after it: a $SYS message routed to `wild` would have been written to it before this one.
    await sys.publishAsync('ops/sentinel', 'x', { qos: 1 })
    await waitFor(() => seenByWild.includes('ops/sentinel'), 30_000)
    expect(seenByWild.filter((t) => t.startsWith('$'))).toEqual([])
    await Promise.all([wild.endAsync(), sys.endAsync(), other.endAsync()])
  }, 90_000)

  it('keep-alive: a silent client is disconnected after 1.5 × its keep-alive, not before', async () => {
    const before = await metric('pulsegate_keepalive_timeouts_total')
    const r = await raw()
    const sentAt = Date.now()
    r.connect({ clientId: 'app:zed:silent', clean: true, keepalive: 1, password: await token(tb, 'zed', 'app') })
    expect((await r.next('connack')).returnCode).toBe(0)
    const closedAt = await r.closed()
    // The server's timer starts after it read the CONNECT, hence after sentAt: never earlier than 1.5 s after it.
    expect(closedAt - sentAt).toBeGreaterThanOrEqual(1500)
    await waitFor(async () => (await metric('pulsegate_keepalive_timeouts_total')) > before, 30_000)
  }, 90_000)

  it('a SUBSCRIBE with a refused filter: 0x80 in its slot, the others granted, the connection stays', async () => {
    const r = await raw()
    r.connect({ clientId: 'app:zed:subs', clean: true, password: await token(tb, 'zed', 'app') })
    expect((await r.next('connack')).returnCode).toBe(0)
    r.send({
      cmd: 'subscribe',
      messageId: 7,
      subscriptions: [
        { topic: 'users/zed/alerts', qos: 1 },
        { topic: 'users/someone-else/alerts', qos: 1 },
        { topic: 'users/zed/live', qos: 0 },
        { topic: '#', qos: 0 },
      ],
    })
    const suback = await r.next('suback')
    expect(suback.messageId).toBe(7)
    expect(suback.granted).toEqual([1, 128, 0, 128])
    r.send({ cmd: 'pingreq' })
    await r.next('pingresp')
    expect(r.closedAt).toBeNull()
  }, 90_000)
})
