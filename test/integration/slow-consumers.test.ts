// Slow consumers (src/limits/outbound.ts): an app that stops reading gets its QoS 0 snapshots held back (the newest per
// topic sent when it reads again) and is disconnected when a QoS 1 delivery finds too many bytes waiting; the bytes
// the broker holds for it stay bounded, and an app that reads keeps getting everything.
import type { Client } from 'aedes'
import type { MqttClient } from 'mqtt'
import type { Duplex } from 'node:stream'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { bytesWaiting } from '../../src/limits/outbound.js'
import { connectWithToken, startTestBroker, type TestBroker, token, waitFor } from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'
import { RawMqtt } from '../helpers/raw-mqtt.js'

const SOFT = 64 * 1024
const HARD = 256 * 1024
const PAD = 'x'.repeat(16 * 1024)

describe('slow consumers', () => {
  let tb: TestBroker
  beforeAll(async () => {
    tb = await startTestBroker('postgres', {
      limits: { outbound: { softBytes: SOFT, hardBytes: HARD, keepTopics: 8 } },
    })
  })
  afterAll(async () => tb?.stop())

  const metric = async (name: string, labels: Record<string, string> = {}) =>
    metricValue(await tb.pg.metrics.registry.metrics(), name, labels) ?? 0
  const serverConn = (clientId: string) =>
    (tb.pg.broker as unknown as { clients: Record<string, Client & { conn: Duplex & { socket?: Duplex } }> }).clients[
      clientId
    ]?.conn

  async function frozenApp(user: string, clientId: string, clean = true): Promise<RawMqtt> {
    const raw = await RawMqtt.open({ port: tb.pg.ports.mqtt as number })
    raw.connect({ clientId, clean, password: await token(tb, user, 'app') })
    expect((await raw.next('connack')).returnCode).toBe(0)
    raw.send({
      cmd: 'subscribe',
      messageId: 1,
      subscriptions: [
        { topic: `users/${user}/live`, qos: 0 },
        { topic: `users/${user}/alerts`, qos: 1 },
      ],
    })
    expect((await raw.next('suback')).granted).toEqual([0, 1])
    return raw
  }

  async function readingApp(user: string, clientId: string): Promise<{ c: MqttClient; got: number[] }> {
    const c = await connectWithToken(tb, await token(tb, user, 'app'), clientId)
    const got: number[] = []
    c.on('message', (_t, payload) => got.push((JSON.parse(payload.toString()) as { seq: number }).seq))
    await c.subscribeAsync(`users/${user}/live`, { qos: 0 })
    return { c, got }
  }

  it('QoS 0 to an app that does not read is held back, bounded, and the newest arrives when it reads again', async () => {
    const user = 'slow-user-1'
    const frozen = await frozenApp(user, `app:${user}:frozen`)
    const reader = await readingApp(user, `app:${user}:reader`)
    frozen.pause()
    const conn = serverConn(`app:${user}:frozen`)
    expect(conn).toBeDefined()
    const dropped0 = await metric('pulsegate_outbound_dropped_total', { role: 'app' })
    let seq = 0
    let maxWaiting = 0
    // Until the kernel's buffers towards the frozen app are full and the guard holds packets back, then 200 more.
    let extra = -1
    while (extra !== 0) {
      tb.pg.publish(`users/${user}/live`, JSON.stringify({ seq: seq++, pad: PAD }), 0, false)
      // deliveries are on the next turns (Aedes: setImmediate); let them happen before measuring
      await new Promise((r) => setImmediate(r))
      await new Promise((r) => setImmediate(r))
      maxWaiting = Math.max(maxWaiting, bytesWaiting(conn as Duplex & { socket?: Duplex }))
      if (extra < 0 && (await metric('pulsegate_outbound_dropped_total', { role: 'app' })) > dropped0) extra = 200
      else if (extra > 0) extra--
      expect(seq).toBeLessThan(50_000)
    }
    const last = seq - 1
    // bounded: at most the soft limit plus the packet that crossed it (and its framing)
    expect(maxWaiting).toBeLessThanOrEqual(SOFT + PAD.length + 1024)
    expect(await metric('pulsegate_outbound_held')).toBe(1)
    // the reading app got every snapshot
    await waitFor(() => reader.got.length === seq, 60_000)
    expect(reader.got[reader.got.length - 1]).toBe(last)
    // reading again: the newest snapshot is delivered
    frozen.resume()
    await waitFor(
      () =>
        frozen.received.some(
          (p) => p.cmd === 'publish' && (JSON.parse(p.payload.toString()) as { seq: number }).seq === last,
        ),
      60_000,
    )
    expect(await metric('pulsegate_outbound_held')).toBe(0)
    await reader.c.endAsync()
    frozen.end()
  })

  it('a QoS 1 delivery that finds more than the hard limit waiting disconnects the app; others are unaffected', async () => {
    const user = 'slow-user-2'
    const frozen = await frozenApp(user, `app:${user}:frozen`)
    const reader = await readingApp(user, `app:${user}:reader`)
    await reader.c.subscribeAsync(`users/${user}/alerts`, { qos: 1 })
    frozen.pause()
    const cuts0 = await metric('pulsegate_outbound_disconnects_total', { role: 'app' })
    let seq = 0
    let maxWaiting = 0
    const conn = serverConn(`app:${user}:frozen`) as Duplex & { socket?: Duplex }
    while ((await metric('pulsegate_outbound_disconnects_total', { role: 'app' })) === cuts0) {
      tb.pg.publish(`users/${user}/alerts`, JSON.stringify({ seq: seq++, pad: PAD }), 1, false)
      await new Promise((r) => setImmediate(r))
      await new Promise((r) => setImmediate(r))
      maxWaiting = Math.max(maxWaiting, bytesWaiting(conn))
      expect(seq).toBeLessThan(50_000)
    }
    expect(maxWaiting).toBeLessThanOrEqual(HARD + PAD.length + 1024)
    // a paused socket does not see the server's close until it reads again
    frozen.resume()
    await frozen.closed()
    expect(await metric('pulsegate_outbound_disconnects_total', { role: 'app' })).toBe(cuts0 + 1)
    await waitFor(() => serverConn(`app:${user}:frozen`) === undefined)
    await waitFor(() => reader.got.length === seq, 60_000)
    await reader.c.endAsync()
  })

  it('a persistent session cut for being slow gets every QoS 1 alert when it reconnects', async () => {
    const user = 'slow-user-3'
    const id = `app:${user}:persistent`
    const frozen = await frozenApp(user, id, false)
    frozen.pause()
    const cuts0 = await metric('pulsegate_outbound_disconnects_total', { role: 'app' })
    let seq = 0
    while ((await metric('pulsegate_outbound_disconnects_total', { role: 'app' })) === cuts0) {
      tb.pg.publish(`users/${user}/alerts`, JSON.stringify({ seq: seq++, pad: PAD }), 1, false)
      await new Promise((r) => setImmediate(r))
      await new Promise((r) => setImmediate(r))
      expect(seq).toBeLessThan(50_000)
    }
    frozen.resume()
    await frozen.closed()
    await waitFor(() => serverConn(id) === undefined)
    // the alerts published while it was gone, too
    for (let k = 0; k < 5; k++) tb.pg.publish(`users/${user}/alerts`, JSON.stringify({ seq: seq++ }), 1, false)
    const again = await RawMqtt.open({ port: tb.pg.ports.mqtt as number })
    again.connect({ clientId: id, clean: false, password: await token(tb, user, 'app') })
    expect((await again.next('connack')).sessionPresent).toBe(true)
    const seen = new Set<number>()
    await waitFor(() => {
      for (const p of again.received.splice(0)) {
        if (p.cmd !== 'publish') continue
        seen.add((JSON.parse(p.payload.toString()) as { seq: number }).seq)
        if (p.messageId !== undefined) again.send({ cmd: 'puback', messageId: p.messageId })
      }
      return seen.size === seq
    }, 60_000)
    again.end()
  })
})
