// A deliberately small MQTT 3.1.1 client for the load generators: CONNECT, QoS 1 PUBLISH with a caller-managed
// in-flight window, PUBACK/CONNACK/PINGRESP parsing, nothing else. MQTT.js does far more per message (stores,
// timers, outgoing queues, topic aliasing), and on a 2-core machine every microsecond the generator spends is
// taken from the broker it measures; this client keeps the generator's cost per message at a few microseconds.
// Without a secure context it speaks plain TCP (bench/compare.ts: bare Aedes and Mosquitto on mqtt://).
import net from 'node:net'
import tls from 'node:tls'

const CONNECT = 0x10
const CONNACK = 0x20
const PUBLISH = 0x30
const PUBACK = 0x40
const PINGREQ = 0xc0
const DISCONNECT = 0xe0

function varint(n: number): number[] {
  const out: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return out
}

function str(s: string): Buffer {
  const b = Buffer.from(s, 'utf8')
  const out = Buffer.allocUnsafe(2 + b.length)
  out.writeUInt16BE(b.length, 0)
  b.copy(out, 2)
  return out
}

export function connectPacket(clientId: string, keepaliveS: number): Buffer {
  // protocol name "MQTT", level 4, flags: clean session
  const vh = Buffer.from([0x00, 0x04, 0x4d, 0x51, 0x54, 0x54, 0x04, 0x02, keepaliveS >> 8, keepaliveS & 0xff])
  const body = Buffer.concat([vh, str(clientId)])
  return Buffer.concat([Buffer.from([CONNECT, ...varint(body.length)]), body])
}

/** The topic part of a PUBLISH (length-prefixed topic), encoded once per connection. */
export function topicBytes(topic: string): Buffer {
  return str(topic)
}

/** QoS 1 PUBLISH: fixed header, topic, packet id, payload, in one buffer (one write). */
export function publishPacket(topic: Buffer, packetId: number, payload: Uint8Array): Buffer {
  const remaining = topic.length + 2 + payload.length
  const len = varint(remaining)
  const out = Buffer.allocUnsafe(1 + len.length + remaining)
  let o = 0
  out[o++] = PUBLISH | 0x02
  for (const b of len) out[o++] = b
  topic.copy(out, o)
  o += topic.length
  out[o++] = packetId >> 8
  out[o++] = packetId & 0xff
  out.set(payload, o)
  return out
}

export interface LiteOptions {
  host: string
  port: number
  clientId: string
  /**
   * a secure context made from the device's key, certificate and the CA (one per device: each has its own cert);
   * null = plain TCP, no TLS at all
   */
  secureContext: tls.SecureContext | null
  servername: string
  keepaliveS: number
  /** a TLS session (ticket) from an earlier connection of this device: the handshake resumes it when the server agrees */
  session?: Buffer
  /** each session ticket the server issues on this connection (TLS 1.3 sends them after the handshake) */
  onSession?(session: Buffer): void
  onPuback(packetId: number): void
  onClose(err: Error | null): void
}

/**
 * One device connection. `connect()` resolves on CONNACK 0 (rejects on a refusal, an error or a close before it).
 * Outgoing packets written in the same tick are coalesced into one socket write (one TLS record).
 */
export class LiteClient {
  socket: net.Socket | null = null
  connected = false
  closed = false
  private buf: Buffer | null = null
  private pending: Buffer[] = []
  private flushScheduled = false
  private connackWaiter: { resolve(): void; reject(e: Error): void } | null = null

  constructor(private readonly o: LiteOptions) {}

  connect(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.destroy(new Error(`no CONNACK within ${timeoutMs} ms`))
      }, timeoutMs)
      this.connackWaiter = {
        resolve: () => {
          clearTimeout(timer)
          resolve()
        },
        reject: (e) => {
          clearTimeout(timer)
          reject(e)
        },
      }
      const sc = this.o.secureContext
      const s = sc
        ? tls.connect({
            host: this.o.host,
            port: this.o.port,
            secureContext: sc,
            servername: this.o.servername,
            ...(this.o.session ? { session: this.o.session } : {}),
          })
        : net.connect({ host: this.o.host, port: this.o.port })
      this.socket = s
      const onSession = this.o.onSession
      if (sc && onSession) s.on('session', (t: Buffer) => onSession(t))
      s.setNoDelay(true)
      s.on(sc ? 'secureConnect' : 'connect', () => {
        s.write(connectPacket(this.o.clientId, this.o.keepaliveS))
      })
      s.on('data', (d: Buffer) => this.onData(d))
      s.on('error', (e) => this.destroy(e))
      s.on('close', () => this.destroy(null))
    })
  }

  private destroy(err: Error | null): void {
    if (this.closed) return
    this.closed = true
    this.connected = false
    this.socket?.destroy()
    if (this.connackWaiter) {
      const w = this.connackWaiter
      this.connackWaiter = null
      w.reject(err ?? new Error('connection closed before CONNACK'))
    } else {
      this.o.onClose(err)
    }
  }

  private onData(d: Buffer): void {
    let b = this.buf ? Buffer.concat([this.buf, d]) : d
    let i = 0
    for (;;) {
      if (b.length - i < 2) break
      // Remaining Length varint
      let len = 0
      let mul = 1
      let j = i + 1
      let complete = false
      while (j < b.length && j < i + 5) {
        const byte = b[j++] as number
        len += (byte & 0x7f) * mul
        mul *= 128
        if ((byte & 0x80) === 0) {
          complete = true
          break
        }
      }
      if (!complete || b.length - j < len) break
      const type = (b[i] as number) & 0xf0
      if (type === PUBACK) {
        this.o.onPuback(((b[j] as number) << 8) | (b[j + 1] as number))
      } else if (type === CONNACK) {
        const rc = b[j + 1] as number
        const w = this.connackWaiter
        this.connackWaiter = null
        if (rc === 0) {
          this.connected = true
          w?.resolve()
        } else {
          w?.reject(Object.assign(new Error(`CONNACK ${rc}`), { code: rc }))
          this.destroy(null)
          return
        }
      }
      // PINGRESP (0xd0) and anything else (no subscriptions are made): ignored
      i = j + len
    }
    if (i >= b.length) this.buf = null
    else {
      b = b.subarray(i)
      this.buf = Buffer.from(b)
    }
  }

  /** Queue a packet; everything queued in this tick goes out as one write. */
  send(packet: Buffer): void {
    if (this.closed || !this.socket) return
    this.pending.push(packet)
    if (!this.flushScheduled) {
      this.flushScheduled = true
      process.nextTick(() => this.flush())
    }
  }

  private flush(): void {
    this.flushScheduled = false
    if (this.closed || !this.socket || this.pending.length === 0) {
      this.pending = []
      return
    }
    const out = this.pending.length === 1 ? (this.pending[0] as Buffer) : Buffer.concat(this.pending)
    this.pending = []
    this.socket.write(out)
  }

  ping(): void {
    this.send(Buffer.from([PINGREQ, 0]))
  }

  /** Clean DISCONNECT, then close. */
  end(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed || !this.socket) return resolve()
      const s = this.socket
      s.once('close', () => resolve())
      this.flush()
      s.end(Buffer.from([DISCONNECT, 0]))
      setTimeout(() => {
        s.destroy()
        resolve()
      }, 2000).unref()
    })
  }
}
