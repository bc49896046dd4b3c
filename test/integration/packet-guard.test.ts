import { randomBytes } from 'node:crypto'
import { once } from 'node:events'
import net from 'node:net'
import { Duplex } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { Aedes } from 'aedes'
import mqtt, { type MqttClient } from 'mqtt'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { guardConnection, type PacketGuard } from '../../src/transport/packet-guard.js'
import { varint } from '../helpers/mqtt-bytes.js'

const LIMIT = 64 * 1024
const MB = 1024 * 1024

interface Violation {
  reason: 'packet_too_large' | 'malformed_length'
  declared: number | null
  port: number | undefined
}

let broker: Aedes
let server: net.Server
let port: number
const violations: Violation[] = []
// Server-side guards by the client's local port, so a test can inspect its own connection.
const guards = new Map<number | undefined, PacketGuard>()
const serverSockets = new Set<net.Socket>()
const mqttClients: MqttClient[] = []
const rawClients: RawClient[] = []

function str(s: string): Buffer {
  const b = Buffer.from(s)
  return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b])
}

function packet(firstByte: number, body: Buffer): Buffer {
  return Buffer.concat([Buffer.from([firstByte]), varint(body.length), body])
}

/** MQTT 3.1.1 CONNECT, clean session, keepalive 60 s. */
function connectPacket(clientId: string): Buffer {
  return packet(0x10, Buffer.concat([str('MQTT'), Buffer.from([4, 0x02, 0, 60]), str(clientId)]))
}

function publishPacket(topic: string, payload: Buffer): Buffer {
  return packet(0x30, Buffer.concat([str(topic), payload]))
}

function subscribePacket(topic: string, qos: number): Buffer {
  return packet(0x82, Buffer.concat([Buffer.from([0, 1]), str(topic), Buffer.from([qos])]))
}

class RawClient {
  buf = Buffer.alloc(0)
  bytes = 0
  record = true
  closedAt: number | null = null
  readonly closed: Promise<void>
  // Captured up front: net.Socket forgets its address once closed.
  readonly localPort: number | undefined
  #waiters = new Set<() => void>()

  constructor(readonly sock: net.Socket) {
    this.localPort = sock.localPort
    sock.on('data', (d: Buffer) => {
      this.bytes += d.length
      if (this.record) this.buf = Buffer.concat([this.buf, d])
      for (const w of this.#waiters) w()
    })
    // The server cuts these connections on purpose: EPIPE/ECONNRESET are expected.
    sock.on('error', () => {})
    this.closed = new Promise((resolve) =>
      sock.once('close', () => {
        this.closedAt = Date.now()
        resolve()
      }),
    )
  }

  // Bounds, not waits (the server shares this event loop, on a machine that can be 5× slower than usual).
  async waitFor(pred: (buf: Buffer) => boolean, ms = 10_000): Promise<void> {
    if (pred(this.buf)) return
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters.delete(check)
        reject(new Error(`timed out; received ${this.buf.toString('hex').slice(0, 64)}`))
      }, ms)
      const check = (): void => {
        if (!pred(this.buf)) return
        clearTimeout(timer)
        this.#waiters.delete(check)
        resolve()
      }
      this.#waiters.add(check)
    })
  }

  /** 'drain', close, or `ms` elapsed, whichever first; never rejects (events.once would on 'error'). */
  drained(ms: number): Promise<boolean> {
    return new Promise((resolve) => {
      const done = (ok: boolean): void => {
        clearTimeout(timer)
        this.sock.off('drain', onDrain)
        this.sock.off('close', onClose)
        resolve(ok)
      }
      const onDrain = (): void => done(true)
      const onClose = (): void => done(false)
      const timer = setTimeout(() => done(false), ms)
      this.sock.once('drain', onDrain)
      this.sock.once('close', onClose)
    })
  }

  write(data: Buffer): Promise<void> {
    return new Promise((resolve) => this.sock.write(data, () => resolve()))
  }

  /** Resolves with ms until close; rejects if the server has not closed it within `ms`. */
  async waitClosed(since: number, ms = 10_000): Promise<number> {
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`connection still open after ${ms} ms`)), ms)
    })
    try {
      await Promise.race([this.closed, timeout])
    } finally {
      clearTimeout(timer)
    }
    return (this.closedAt ?? Date.now()) - since
  }
}

async function rawSocket(): Promise<RawClient> {
  const sock = net.connect(port, '127.0.0.1')
  await once(sock, 'connect')
  sock.setNoDelay(true)
  const c = new RawClient(sock)
  rawClients.push(c)
  return c
}

const isConnack = (b: Buffer): boolean => b.length >= 4 && b[0] === 0x20 && b[3] === 0

async function rawConnected(clientId: string): Promise<RawClient> {
  const c = await rawSocket()
  await c.write(connectPacket(clientId))
  await c.waitFor(isConnack)
  c.buf = c.buf.subarray(4)
  return c
}

async function mqttClient(clientId: string): Promise<MqttClient> {
  const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { clientId, reconnectPeriod: 0 })
  mqttClients.push(c)
  return c
}

/** Collects messages on `topic` until `count` have arrived. */
function collect(client: MqttClient, topic: string, count: number, ms = 10_000): Promise<Buffer[]> {
  const got: Buffer[] = []
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      client.off('message', onMessage)
      reject(new Error(`got ${got.length}/${count} messages on ${topic}`))
    }, ms)
    function onMessage(t: string, payload: Buffer): void {
      if (t !== topic) return
      got.push(payload)
      if (got.length === count) {
        clearTimeout(timer)
        client.off('message', onMessage)
        resolve(got)
      }
    }
    client.on('message', onMessage)
  })
}

function memory(): number {
  const m = process.memoryUsage()
  return m.heapUsed + m.arrayBuffers
}

beforeAll(async () => {
  broker = await Aedes.createBroker({ concurrency: 0 })
  server = net.createServer((sock) => {
    serverSockets.add(sock)
    sock.on('close', () => serverSockets.delete(sock))
    const remotePort = sock.remotePort
    const guard = guardConnection(sock, {
      maxPacketBytes: LIMIT,
      onViolation: (reason, declared) => violations.push({ reason, declared, port: remotePort }),
    })
    guards.set(remotePort, guard)
    broker.handle(guard)
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  port = (server.address() as net.AddressInfo).port
})

afterAll(async () => {
  await Promise.all(mqttClients.map((c) => c.endAsync(true)))
  for (const c of rawClients) c.sock.destroy()
  for (const s of serverSockets) s.destroy()
  await new Promise<void>((resolve) => server.close(() => resolve()))
  await new Promise<void>((resolve) => broker.close(() => resolve()))
})

beforeEach(() => {
  violations.length = 0
})

describe('PacketGuard in front of a real Aedes broker', () => {
  it('is transparent to MQTT.js: QoS 0/1 payloads of 1 KB and 60 KB arrive intact', async () => {
    const sub = await mqttClient('t1-sub')
    const pub = await mqttClient('t1-pub')
    await sub.subscribeAsync('t1/#', { qos: 1 })

    for (const qos of [0, 1] as const) {
      for (const size of [1024, 60 * 1024]) {
        const topic = `t1/q${qos}/${size}`
        const payload = randomBytes(size)
        const got = collect(sub, topic, 1)
        await pub.publishAsync(topic, payload, { qos })
        const [msg] = await got
        expect(msg?.equals(payload)).toBe(true)
      }
    }
    expect(violations).toEqual([])
  })

  it('passes a burst of 2000 QoS 1 publishes (many packets per chunk) in order', async () => {
    const sub = await mqttClient('t1b-sub')
    const pub = await mqttClient('t1b-pub')
    await sub.subscribeAsync('t1b/burst', { qos: 1 })
    const n = 2000
    const got = collect(sub, 't1b/burst', n, 20_000)
    await Promise.all(Array.from({ length: n }, (_, i) => pub.publishAsync('t1b/burst', `m${i}`, { qos: 1 })))
    const msgs = await got
    expect(msgs.map((m) => m.toString())).toEqual(Array.from({ length: n }, (_, i) => `m${i}`))
    expect(violations).toEqual([])
  })

  it('accepts a packet of exactly maxPacketBytes and cuts one byte more', async () => {
    const sub = await mqttClient('edge-sub')
    await sub.subscribeAsync('edge', { qos: 0 })
    const header = 1 + 3 // type byte + 3-byte varint (remaining length > 16383)
    const exact = publishPacket('edge', Buffer.alloc(LIMIT - header - 2 - 4, 7))
    expect(exact.length).toBe(LIMIT)

    const ok = await rawConnected('edge-pub')
    const got = collect(sub, 'edge', 1)
    await ok.write(exact)
    expect((await got)[0]?.length).toBe(LIMIT - header - 6)
    expect(violations).toEqual([])

    const over = await rawConnected('edge-over')
    const start = Date.now()
    await over.write(publishPacket('edge', Buffer.alloc(LIMIT - header - 2 - 4 + 1, 7)))
    await over.waitClosed(start)
    expect(violations).toEqual([{ reason: 'packet_too_large', declared: LIMIT - header + 1, port: over.localPort }])
  })

  it('cuts a PUBLISH declaring 200 MB right after its header, without buffering the body', async () => {
    const declared = 200 * MB
    const cap = 32 * MB
    const c = await rawConnected('big')
    const before = memory()
    c.sock.write(Buffer.concat([Buffer.from([0x30]), varint(declared), randomBytes(4096)]))

    // Keep streaming body (one reused buffer, so the client side allocates nothing) until the server hangs up;
    // without the guard the broker would buffer all of it while waiting for 200 MB.
    const chunk = randomBytes(64 * 1024)
    let sent = 4096
    while (c.closedAt === null && !c.sock.destroyed && sent < cap) {
      if (!c.sock.write(chunk)) await c.drained(100)
      sent += chunk.length
    }

    // Right after the header = while the client was still streaming, long before the cap: in bytes, not in time (the
    // client only gets ahead of the server, which shares its event loop, by what the socket buffers hold).
    await c.waitClosed(Date.now())
    expect(sent).toBeLessThan(cap)
    expect(violations).toEqual([{ reason: 'packet_too_large', declared: 209715200, port: c.localPort }])
    expect(guards.get(c.localPort)?.destroyed).toBe(true)
    expect(memory() - before).toBeLessThan(20 * MB)
  })

  it('handles a valid packet whose header and body arrive one byte per write', async () => {
    const sub = await mqttClient('split-sub')
    await sub.subscribeAsync('split/ok', { qos: 0 })

    const c = await rawSocket()
    for (const byte of connectPacket('split-pub')) {
      await c.write(Buffer.from([byte]))
      await sleep(2)
    }
    await c.waitFor(isConnack)

    const payload = randomBytes(300) // 2-byte varint, so the length itself is split too
    const got = collect(sub, 'split/ok', 1)
    for (const byte of publishPacket('split/ok', payload)) {
      await c.write(Buffer.from([byte]))
      await sleep(1)
    }
    expect((await got)[0]?.equals(payload)).toBe(true)
    expect(violations).toEqual([])
  })

  it('cuts an oversize header that arrives one byte per write, once its length is complete', async () => {
    const c = await rawConnected('split-big')
    const header = Buffer.concat([Buffer.from([0x30]), varint(200 * MB)])
    expect(header.length).toBe(5)
    for (const byte of header.subarray(0, 4)) {
      await c.write(Buffer.from([byte]))
      await sleep(10)
    }
    await sleep(50)
    expect(c.closedAt).toBeNull() // the length is not known yet
    expect(violations).toEqual([])

    const start = Date.now()
    await c.write(header.subarray(4))
    await c.waitClosed(start)
    expect(violations).toEqual([{ reason: 'packet_too_large', declared: 209715200, port: c.localPort }])
  })

  it('rejects a 5-byte Remaining Length as malformed', async () => {
    const c = await rawConnected('malformed')
    const start = Date.now()
    await c.write(Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]))
    await c.waitClosed(start)
    expect(violations).toEqual([{ reason: 'malformed_length', declared: null, port: c.localPort }])
  })

  it('closes only the connections sending garbage; other clients and the broker carry on', async () => {
    const sub = await mqttClient('garbage-sub')
    const pub = await mqttClient('garbage-pub')
    let drops = 0
    for (const client of [sub, pub]) client.on('close', () => drops++)
    await sub.subscribeAsync('garbage/ok', { qos: 1 })

    const roundTrip = async (text: string): Promise<void> => {
      const got = collect(sub, 'garbage/ok', 1)
      await pub.publishAsync('garbage/ok', text, { qos: 1 })
      expect((await got)[0]?.toString()).toBe(text)
    }
    await roundTrip('before')

    // Each connection streams random bytes until the server hangs up: depending on the bytes, the guard
    // (oversize/malformed length) or Aedes' parser (bad packet, or not a CONNECT) does it.
    const attackers = await Promise.all(Array.from({ length: 10 }, () => rawSocket()))
    const start = Date.now()
    await Promise.all(
      attackers.map(async (c) => {
        for (let i = 0; i < 64 && c.closedAt === null && !c.sock.destroyed; i++) {
          c.sock.write(randomBytes(4096))
          await sleep(5)
        }
        await c.waitClosed(start, 15_000)
      }),
    )
    for (const v of violations) expect(['packet_too_large', 'malformed_length']).toContain(v.reason)

    await roundTrip('after')
    expect(drops).toBe(0)
    expect(sub.connected && pub.connected).toBe(true)
    const late = await mqttClient('garbage-late')
    expect(late.connected).toBe(true)
    expect(broker.closed).toBe(false)
  })

  it('does not buffer without bound when a subscriber stops reading', async () => {
    const sub = await rawConnected('bp-sub')
    await sub.write(subscribePacket('bp', 0))
    await sub.waitFor((b) => b.length >= 5 && b[0] === 0x90)
    sub.record = false
    sub.sock.pause()

    const pub = await rawConnected('bp-pub')
    const msg = publishPacket('bp', randomBytes(16 * 1024))
    const before = memory()
    const subGuard = guards.get(sub.localPort)!
    const pubGuard = guards.get(pub.localPort)!
    let sent = 0
    let stalled = false
    // Publish as fast as the socket accepts until the whole path has backed up: no 'drain' comes and the server has
    // stopped reading the publisher (its guard paused the socket). Half a second without a 'drain' alone can also
    // be a busy machine; then the loop goes on.
    while (sent < 200 * MB && !pub.sock.destroyed) {
      if (pub.sock.write(msg)) {
        sent += msg.length
        if ((sent / msg.length) % 64 === 0) await new Promise(setImmediate)
        continue
      }
      sent += msg.length
      if (!(await pub.drained(500)) && pubGuard.socket.isPaused()) {
        stalled = true
        break
      }
    }
    expect(stalled).toBe(true)

    // Outbound: the guard hands the socket one batch at a time; inbound: it pauses the socket at its highWaterMark.
    expect(subGuard.writableLength + subGuard.socket.writableLength).toBeLessThan(2 * MB)
    expect(pubGuard.readableLength).toBeLessThan(256 * 1024)
    expect(memory() - before).toBeLessThan(32 * MB)

    // Reading again unblocks the whole chain: what was held along it arrives (waited for, not given 300 ms).
    const receivedBefore = sub.bytes
    sub.sock.resume()
    await expect.poll(() => sub.bytes - receivedBefore, { timeout: 10_000 }).toBeGreaterThan(1 * MB)
    expect(violations).toEqual([])
    pub.sock.destroy()
    sub.sock.destroy()
  })
})

describe('PacketGuard header state machine across chunk boundaries', () => {
  // Deterministic PRNG so a failure reproduces.
  let seed = 42
  const rand = (n: number): number => {
    seed = (seed * 1103515245 + 12345) & 0x7fffffff
    return seed % n
  }

  type Seen = Array<[string, number | null]>

  /** A socket stand-in that lets the test choose exactly where chunks split. */
  async function feed(
    chunks: Buffer[],
    maxPacketBytes: number,
  ): Promise<{ out: Buffer; violations: Seen; destroyed: boolean }> {
    const socket = new Duplex({ read() {}, write: (_c, _e, cb) => cb() })
    const violations: Seen = []
    const guard = guardConnection(socket, { maxPacketBytes, onViolation: (r, d) => violations.push([r, d]) })
    const out: Buffer[] = []
    guard.on('data', (d: Buffer) => out.push(d))
    const ended = new Promise<void>((resolve) => {
      guard.on('end', resolve)
      guard.on('close', resolve)
    })
    for (const chunk of chunks) socket.emit('data', chunk)
    // The guard may queue pushes; let them drain before comparing.
    socket.emit('end')
    await ended
    return { out: Buffer.concat(out), violations, destroyed: guard.destroyed }
  }

  function split(buf: Buffer): Buffer[] {
    const chunks: Buffer[] = []
    for (let i = 0; i < buf.length; ) {
      // Mostly tiny chunks so headers straddle boundaries, sometimes large ones for the fast path.
      const size = rand(4) === 0 ? 1 + rand(70_000) : 1 + rand(8)
      chunks.push(buf.subarray(i, i + size))
      i += size
    }
    return chunks
  }

  // Bodies are all 0xFF: if the parser ever loses a packet boundary it reads body bytes as a length,
  // and four continuation bytes in a row are a malformed_length, so drift cannot go unnoticed.
  const pkt = (len: number, type = 0x30): Buffer =>
    Buffer.concat([Buffer.from([type]), varint(len), Buffer.alloc(len, 0xff)])

  /** A packet whose total size (header included) is exactly `total`. */
  function packetOfTotal(total: number): { buf: Buffer; remaining: number; headerLen: number } {
    for (let n = 1; n <= 4; n++) {
      const remaining = total - 1 - n
      if (varint(remaining).length === n) return { buf: pkt(remaining), remaining, headerLen: 1 + n }
    }
    throw new Error(`no packet of total ${total}`)
  }

  // Remaining lengths covering 1-, 2-, 3- and 4-byte varints and their edges.
  const lengths = [0, 1, 127, 128, 300, 16_383, 16_384, 60_000, 2_097_151, 2_097_152]
  const stream = Buffer.concat(
    Array.from({ length: 400 }, (_, k) =>
      pkt(k < lengths.length ? lengths[k]! : rand(4) === 0 ? rand(20_000) : rand(200), 0x30 | rand(16)),
    ),
  )
  const biggest = 1 + 4 + 2_097_152

  it('passes every byte through unchanged and keeps packet boundaries, whatever the chunking', async () => {
    for (let trial = 0; trial < 30; trial++) {
      const r = await feed(split(stream), biggest)
      expect(r.violations).toEqual([])
      expect(r.out.equals(stream)).toBe(true)
    }
    expect((await feed([stream], biggest)).out.equals(stream)).toBe(true)
    const head = stream.subarray(0, 20_000)
    const r = await feed(
      Array.from(head, (b) => Buffer.from([b])),
      biggest,
    )
    expect(r.violations).toEqual([])
    expect(r.out.equals(head)).toBe(true)
  })

  it('enforces the limit exactly, with the header split at every position', async () => {
    const lead = pkt(10) // so the header under test does not start at offset 0
    for (const max of [131, 16_390, 2_097_160]) {
      for (const [total, expected] of [
        [max, []],
        [max + 1, [['packet_too_large', packetOfTotal(max + 1).remaining]]],
      ] as const) {
        const { buf, headerLen } = packetOfTotal(total)
        for (let cut = 0; cut <= headerLen; cut++) {
          const r = await feed([Buffer.concat([lead, buf.subarray(0, cut)]), buf.subarray(cut)], max)
          expect([max, total, cut, r.violations]).toEqual([max, total, cut, expected])
        }
      }
    }
  })

  it('detects a malformed length with the header split at every position', async () => {
    const bad = Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f])
    for (let cut = 0; cut <= bad.length; cut++) {
      const r = await feed([Buffer.concat([pkt(10), bad.subarray(0, cut)]), bad.subarray(cut)], biggest)
      expect([cut, r.violations]).toEqual([cut, [['malformed_length', null]]])
      expect(r.destroyed).toBe(true)
    }
    // Byte by byte, and with the longest valid varint just before it.
    const bytes = Buffer.concat([pkt(2_097_152), bad])
    const r = await feed(Array.from(bytes.subarray(0, 64), (b) => Buffer.from([b])).concat(bytes.subarray(64)), biggest)
    expect(r.violations).toEqual([['malformed_length', null]])
  })

  it('catches a bad header wherever it falls, and forwards nothing of its body', async () => {
    for (let trial = 0; trial < 30; trial++) {
      const bad =
        trial % 2 === 0
          ? { header: Buffer.concat([Buffer.from([0x30]), varint(biggest)]), expected: ['packet_too_large', biggest] }
          : { header: Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x7f]), expected: ['malformed_length', null] }
      const input = Buffer.concat([stream, bad.header, Buffer.alloc(100_000, 0xee)])
      const r = await feed(split(input), biggest)
      expect(r.violations).toEqual([bad.expected])
      expect(r.destroyed).toBe(true)
      expect(r.out.equals(input.subarray(0, r.out.length))).toBe(true)
      expect(r.out.length).toBeLessThan(stream.length + bad.header.length)
    }
  })
})
