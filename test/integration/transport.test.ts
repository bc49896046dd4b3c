// The packet guard through the full broker: every listener (TCP, mTLS, WebSocket) cuts an oversize packet at its
// header, after authentication too, without buffering the body; garbage closes only the connection that sent it.
import crypto from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { setTimeout as sleep } from 'node:timers/promises'
import tls from 'node:tls'
import type { MqttClient } from 'mqtt'
import mqttPacket from 'mqtt-packet'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WebSocket } from 'ws'
import {
  connectWithToken,
  type DeviceCreds,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  token,
} from '../helpers/harness.js'
import { varint } from '../helpers/mqtt-bytes.js'

const LIMIT = 64 * 1024
const MB = 1024 * 1024
const DECLARED = 200 * MB
/** body bytes a client streams after the huge header before giving up on the server hanging up */
const HUGE_CAP = 64 * MB

let tb: TestBroker
let dev: DeviceCreds
let appToken: string
const sockets: net.Socket[] = []
const wsockets: WebSocket[] = []
const clients: MqttClient[] = []

beforeAll(async () => {
  tb = await startTestBroker('postgres', { limits: { maxPacketBytes: LIMIT } })
  dev = await provisionDevice(tb, 'trk-t', 'alice')
  appToken = await token(tb, 'alice', 'app')
})

afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => {})))
  for (const s of sockets) s.destroy()
  for (const w of wsockets) w.terminate()
  await tb?.stop()
})

/** A PUBLISH fixed header declaring `declared` body bytes, followed by the first 4 KB of "body". */
const hugePublishStart = () => Buffer.concat([Buffer.from([0x30]), varint(DECLARED), crypto.randomBytes(4096)])

function connectBytes(clientId: string, password?: string): Buffer {
  return mqttPacket.generate({
    cmd: 'connect',
    clientId,
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    keepalive: 30,
    ...(password ? { username: 'jwt', password: Buffer.from(password) } : {}),
  })
}

const CONNACK_OK = Buffer.from([0x20, 0x02, 0x00, 0x00])

function memory(): number {
  const m = process.memoryUsage()
  return m.heapUsed + m.arrayBuffers
}

async function guardCuts(listener: string): Promise<number> {
  const m = await tb.pg.metrics.registry.getSingleMetric('pulsegate_packet_guard_cuts_total')!.get()
  return m.values.filter((v) => v.labels['listener'] === listener).reduce((n, v) => n + v.value, 0)
}

/** A raw socket (TCP or TLS) that records what it receives and when it was closed. */
class Raw {
  buf = Buffer.alloc(0)
  closedAt: number | null = null
  readonly closed: Promise<void>
  constructor(readonly sock: net.Socket) {
    sockets.push(sock)
    sock.on('data', (d: Buffer) => {
      if (this.buf.length < 4096) this.buf = Buffer.concat([this.buf, d])
    })
    sock.on('error', () => {}) // the server cuts these on purpose: EPIPE/ECONNRESET are expected
    this.closed = new Promise((resolve) =>
      sock.once('close', () => {
        this.closedAt = Date.now()
        resolve()
      }),
    )
  }

  // A bound, not a wait: the mTLS CONNECT looks the device up in the database, on a machine that can be 5× slower.
  async waitConnack(ms = 15_000): Promise<void> {
    const until = Date.now() + ms
    while (!this.buf.subarray(0, 4).equals(CONNACK_OK)) {
      if (this.closedAt !== null || Date.now() > until) throw new Error(`no CONNACK 0: got ${this.buf.toString('hex')}`)
      await sleep(5)
    }
  }

  drained(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms)
      function done() {
        clearTimeout(t)
        resolve()
      }
      this.sock.once('drain', done)
      this.sock.once('close', done)
    })
  }

  /**
   * Sends the huge header, then keeps streaming body (one reused chunk) until the server hangs up or HUGE_CAP bytes
   * are sent. Cut at the header means: hung up while the client was still streaming, long before the cap (a server
   * waiting for the 200 MB body would not hang up at all). Measured in bytes, not in time: the client and the broker
   * share an event loop, so the client only gets ahead by what the socket buffers hold, however busy the machine.
   */
  async sendHugePublish(): Promise<{ cut: boolean; sent: number }> {
    this.sock.write(hugePublishStart())
    const chunk = crypto.randomBytes(64 * 1024)
    let sent = 4096
    while (this.closedAt === null && !this.sock.destroyed && sent < HUGE_CAP) {
      if (!this.sock.write(chunk)) await this.drained(50)
      sent += chunk.length
    }
    // A socket destroyed by a failed write (EPIPE, ECONNRESET) still emits 'close'.
    if (this.sock.destroyed) await this.closed
    return { cut: this.closedAt !== null, sent }
  }
}

async function rawTcp(): Promise<Raw> {
  const sock = net.connect(tb.pg.ports.mqtt!, '127.0.0.1')
  await once(sock, 'connect')
  sock.setNoDelay(true)
  return new Raw(sock)
}

async function rawTls(creds: { cert: string; key: string }): Promise<Raw> {
  const sock = tls.connect({
    host: '127.0.0.1',
    port: tb.pg.ports.mqtts!,
    servername: 'localhost',
    ca: tb.ca,
    cert: creds.cert,
    key: creds.key,
  })
  await once(sock, 'secureConnect')
  return new Raw(sock)
}

describe('a PUBLISH header declaring 200 MB is cut at the header on every listener', () => {
  it('plain TCP, after a valid token CONNECT', async () => {
    const c = await rawTcp()
    c.sock.write(connectBytes('app:alice:tcp', appToken))
    await c.waitConnack()
    expect(tb.pg.principalOf('app:alice:tcp')?.role).toBe('app')

    const cutsBefore = await guardCuts('mqtt')
    const memBefore = memory()
    const { cut, sent } = await c.sendHugePublish()
    expect(cut, 'the server did not hang up').toBe(true)
    expect(sent).toBeLessThan(HUGE_CAP)
    expect(await guardCuts('mqtt')).toBe(cutsBefore + 1)
    expect(memory() - memBefore).toBeLessThan(20 * MB)
    await expect.poll(() => tb.pg.principalOf('app:alice:tcp'), { timeout: 10_000 }).toBeUndefined()
  })

  it('mTLS, after a device certificate CONNECT', async () => {
    const c = await rawTls(dev)
    c.sock.write(connectBytes(dev.deviceId))
    await c.waitConnack()
    expect(tb.pg.principalOf(dev.deviceId)?.role).toBe('device')

    const cutsBefore = await guardCuts('mqtts')
    const memBefore = memory()
    const { cut, sent } = await c.sendHugePublish()
    expect(cut, 'the server did not hang up').toBe(true)
    expect(sent).toBeLessThan(HUGE_CAP)
    expect(await guardCuts('mqtts')).toBe(cutsBefore + 1)
    expect(memory() - memBefore).toBeLessThan(20 * MB)
    await expect.poll(() => tb.pg.principalOf(dev.deviceId), { timeout: 10_000 }).toBeUndefined()
  })

  it('plain TCP before CONNECT: an unauthenticated peer is cut the same way', async () => {
    const c = await rawTcp()
    const cutsBefore = await guardCuts('mqtt')
    const { cut, sent } = await c.sendHugePublish()
    expect(cut, 'the server did not hang up').toBe(true)
    expect(sent).toBeLessThan(HUGE_CAP)
    expect(await guardCuts('mqtt')).toBe(cutsBefore + 1)
  })
})

describe('WebSocket (/mqtt with a Bearer token)', () => {
  async function openWs(clientId: string): Promise<{ ws: WebSocket; closed: Promise<{ code: number; at: number }> }> {
    const ws = new WebSocket(`ws://127.0.0.1:${tb.pg.ports.http}/mqtt`, 'mqtt', {
      headers: { Authorization: `Bearer ${appToken}` },
    })
    wsockets.push(ws)
    ws.on('error', () => {})
    const closed = new Promise<{ code: number; at: number }>((resolve) =>
      ws.once('close', (code) => resolve({ code, at: Date.now() })),
    )
    await once(ws, 'open')
    expect(ws.protocol).toBe('mqtt')
    // mqtt-packet writes a packet in pieces and each piece may travel as its own WebSocket message: gather them.
    let received = Buffer.alloc(0)
    const connack = new Promise<Buffer>((resolve) => {
      const on = (d: Buffer) => {
        received = Buffer.concat([received, d])
        if (received.length < 4) return
        ws.off('message', on)
        resolve(received)
      }
      ws.on('message', on)
    })
    ws.send(connectBytes(clientId))
    expect((await connack).subarray(0, 4)).toEqual(CONNACK_OK)
    expect(tb.pg.principalOf(clientId)?.role).toBe('app')
    return { ws, closed }
  }

  it('a single WebSocket message larger than the limit closes the socket', async () => {
    const { ws, closed } = await openWs('app:alice:ws1')
    const memBefore = memory()
    ws.send(crypto.randomBytes(1 * MB))
    // Awaited, not raced with a second: a busy machine can stall the shared event loop that long.
    const { code } = await closed
    expect(code).toBe(1009) // "message too big", from ws' maxPayload, before the frame is buffered
    expect(memory() - memBefore).toBeLessThan(20 * MB)
    await expect.poll(() => tb.pg.principalOf('app:alice:ws1'), { timeout: 10_000 }).toBeUndefined()
  })

  it('a message just over the limit (under the frame cap) holding one oversize PUBLISH is cut by the guard', async () => {
    const { ws, closed } = await openWs('app:alice:ws2')
    const cutsBefore = await guardCuts('ws')
    const topic = Buffer.from('\u0000\u0011users/alice/alert') // 2-byte length + 17 bytes
    const body = Buffer.concat([topic, Buffer.alloc(LIMIT - 4 - topic.length + 1, 7)]) // 4 = type byte + 3-byte varint
    const packet = Buffer.concat([Buffer.from([0x30]), varint(body.length), body])
    expect(packet.length).toBe(LIMIT + 1)
    ws.send(packet)
    await closed
    expect(await guardCuts('ws')).toBe(cutsBefore + 1)
  })

  it('a 200 MB PUBLISH header streamed over many small messages is cut at the header', async () => {
    const { ws, closed } = await openWs('app:alice:ws3')
    const cutsBefore = await guardCuts('ws')
    const memBefore = memory()
    let isClosed = false
    void closed.then(() => {
      isClosed = true
    })
    ws.send(hugePublishStart())
    const chunk = crypto.randomBytes(32 * 1024)
    for (let i = 0; i < 200 && !isClosed && ws.readyState === WebSocket.OPEN; i++) {
      ws.send(chunk)
      if (i % 16 === 0) await sleep(1)
    }
    // Closed at all means cut at the header: a server waiting for the 200 MB body would keep the socket open.
    await closed
    expect(await guardCuts('ws')).toBe(cutsBefore + 1)
    expect(memory() - memBefore).toBeLessThan(20 * MB)
  })
})

describe('garbage closes only the connection that sent it', () => {
  it('random bytes on raw TCP (before and after CONNECT) leave a connected app client, the broker and HTTP working', async () => {
    const app = await connectWithToken(tb, appToken, 'app:alice:bystander')
    clients.push(app)
    let drops = 0
    app.on('close', () => drops++)
    await app.publishAsync('users/alice/sync/request', '{}', { qos: 1 })

    const attackers = await Promise.all(Array.from({ length: 8 }, () => rawTcp()))
    // Half of them authenticate first, so the garbage hits a live MQTT session rather than the CONNECT parser.
    await Promise.all(
      attackers.slice(0, 4).map(async (c, i) => {
        c.sock.write(connectBytes(`app:alice:garbage${i}`, appToken))
        await c.waitConnack()
      }),
    )
    await Promise.all(
      attackers.map(async (c) => {
        // Keep streaming until the server hangs up: a random header may declare up to 64 KB (the limit) of body.
        for (let i = 0; i < 64 && c.closedAt === null && !c.sock.destroyed; i++) {
          c.sock.write(crypto.randomBytes(4096))
          await sleep(5)
        }
        await Promise.race([c.closed, sleep(15_000)])
      }),
    )
    // No bound on the whole exchange: its 64 writes 5 ms apart take as long as the machine makes them take.
    for (const c of attackers) expect(c.closedAt, 'a garbage connection stayed open').not.toBeNull()

    await app.publishAsync('users/alice/sync/request', '{}', { qos: 1 })
    expect(app.connected).toBe(true)
    expect(drops).toBe(0)
    const later = await connectWithToken(tb, appToken, 'app:alice:later')
    clients.push(later)
    expect(later.connected).toBe(true)
    const health = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/healthz`)
    expect(health.status).toBe(200)
    const ready = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/readyz`)
    expect(ready.status).toBe(200)
  })
})
