// A raw MQTT 3.1.1 client on a plain or TLS socket: writes exactly the packets a test builds with mqtt-packet (what
// MQTT.js would not send, such as a zero-byte client id with CleanSession=0) and collects every packet it gets back.
import net from 'node:net'
import tls from 'node:tls'
import mqttPacket, { type Packet } from 'mqtt-packet'
import { varint } from './mqtt-bytes.js'

export interface RawTarget {
  port: number
  /** mTLS: client certificate and key, and the CA of the server certificate */
  tls?: { cert: string; key: string; ca: Buffer }
  /** bytes written before any MQTT packet (a load balancer's PROXY header; plain TCP only) */
  preamble?: Buffer
}

export class RawMqtt {
  readonly received: Packet[] = []
  closedAt: number | null = null
  private readonly waiters = new Set<() => void>()

  private constructor(private readonly socket: net.Socket) {
    const parser = mqttPacket.parser({ protocolVersion: 4 })
    parser.on('packet', (p: Packet) => {
      this.received.push(p)
      this.wake()
    })
    socket.on('data', (d: Buffer) => parser.parse(d))
    socket.on('error', () => {})
    socket.on('close', () => {
      this.closedAt = Date.now()
      this.wake()
    })
  }

  static open(target: RawTarget): Promise<RawMqtt> {
    return new Promise((resolve, reject) => {
      const socket = target.tls
        ? tls.connect({ host: '127.0.0.1', port: target.port, servername: 'localhost', ...target.tls }, () =>
            resolve(new RawMqtt(socket)),
          )
        : net.connect({ host: '127.0.0.1', port: target.port }, () => {
            if (target.preamble) socket.write(target.preamble)
            resolve(new RawMqtt(socket))
          })
      socket.once('error', reject)
    })
  }

  /** stop reading the socket (a frozen app): the server's writes pile up in the kernel, then in its own buffers */
  pause(): void {
    this.socket.pause()
  }

  resume(): void {
    this.socket.resume()
  }

  send(packet: Packet): void {
    this.socket.write(mqttPacket.generate(packet))
  }

  /** CONNECT built byte by byte: mqtt-packet refuses to generate some of what the tests must send */
  connect(opts: { clientId: string; clean: boolean; keepalive?: number; password?: string }): void {
    const str = (v: string | Buffer) => {
      const b = typeof v === 'string' ? Buffer.from(v) : v
      return Buffer.concat([Buffer.from([b.length >> 8, b.length & 0xff]), b])
    }
    const keepalive = opts.keepalive ?? 60
    const flags = (opts.password ? 0xc0 : 0) | (opts.clean ? 0x02 : 0)
    const body = Buffer.concat([
      str('MQTT'),
      Buffer.from([4, flags, keepalive >> 8, keepalive & 0xff]),
      str(opts.clientId),
      ...(opts.password ? [str('jwt'), str(opts.password)] : []),
    ])
    this.socket.write(Buffer.concat([Buffer.from([0x10]), varint(body.length), body]))
  }

  /** the first received packet of this kind (waits for it), or throws once the socket closed without one */
  async next<C extends Packet['cmd']>(cmd: C, timeoutMs = 30_000): Promise<Extract<Packet, { cmd: C }>> {
    const until = Date.now() + timeoutMs
    for (;;) {
      const i = this.received.findIndex((p) => p.cmd === cmd)
      if (i >= 0) return this.received.splice(i, 1)[0] as Extract<Packet, { cmd: C }>
      if (this.closedAt !== null) throw new Error(`closed before ${cmd}`)
      if (Date.now() > until) throw new Error(`no ${cmd} within ${timeoutMs} ms`)
      await this.change(until - Date.now())
    }
  }

  /** resolves when the server has closed the connection */
  async closed(timeoutMs = 30_000): Promise<number> {
    const until = Date.now() + timeoutMs
    while (this.closedAt === null) {
      if (Date.now() > until) throw new Error(`still open after ${timeoutMs} ms`)
      await this.change(until - Date.now())
    }
    return this.closedAt
  }

  end(): void {
    this.socket.destroy()
  }

  private change(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(t)
        this.waiters.delete(done)
        resolve()
      }
      const t = setTimeout(done, Math.max(ms, 1))
      this.waiters.add(done)
    })
  }

  private wake(): void {
    for (const w of [...this.waiters]) w()
  }
}
