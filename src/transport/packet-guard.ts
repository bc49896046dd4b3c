import { Duplex } from 'node:stream'

export interface PacketGuardOptions {
  /** Largest whole packet accepted: fixed header (type byte + length varint) + remaining length. */
  maxPacketBytes: number
  /** `declared` is the Remaining Length from the header, or null when the varint itself is malformed. */
  onViolation: (reason: 'packet_too_large' | 'malformed_length', declared: number | null) => void
}

// Parser states. Numbers, not strings: compared on every header byte.
const TYPE = 0 // expecting byte 1 of a fixed header
const LENGTH = 1 // inside the Remaining Length varint
const BODY = 2 // counting down body bytes
const DEAD = 3 // violation seen; ignore everything

type Violation = 'packet_too_large' | 'malformed_length'

/**
 * A Duplex placed between a socket and broker.handle(). Aedes buffers a whole packet (up to 256 MB)
 * before any hook runs, so this reads each fixed header as bytes stream past and kills the connection
 * as soon as a header declares an oversize (or malformed) length, before the body is buffered anywhere.
 * Memory is O(1): bodies are skipped by arithmetic, never copied. Bytes pass through unchanged.
 */
export class PacketGuard extends Duplex {
  readonly socket: Duplex
  readonly #max: number
  readonly #onViolation: PacketGuardOptions['onViolation']

  #state = TYPE
  #remaining = 0 // body bytes left in the current packet
  #length = 0 // Remaining Length accumulated so far (split headers only)
  #shift = 0 // bit position of the next length byte (split headers only)
  #declared: number | null = null
  #socketPaused = false
  #eof = false

  constructor(socket: Duplex, opts: PacketGuardOptions) {
    // decodeStrings: false so mqtt-packet's string topics go to the socket as-is, no extra Buffer per write.
    super({ decodeStrings: false })
    if (!Number.isInteger(opts.maxPacketBytes) || opts.maxPacketBytes < 2) {
      throw new RangeError(`maxPacketBytes must be an integer >= 2, got ${opts.maxPacketBytes}`)
    }
    this.socket = socket
    this.#max = opts.maxPacketBytes
    this.#onViolation = opts.onViolation

    socket.on('data', this.#onData)
    socket.on('end', this.#onEnd)
    socket.on('error', this.#onError)
    socket.on('close', this.#onClose)
  }

  #onData = (data: Buffer | string): void => {
    if (this.#state === DEAD) return
    const chunk = typeof data === 'string' ? Buffer.from(data) : data
    const violation = this.#scan(chunk)
    if (violation !== null) {
      this.#violate(violation)
      return
    }
    if (!this.push(chunk)) {
      this.#socketPaused = true
      this.socket.pause()
    }
  }

  /** Advances the header state machine over one chunk; returns a violation or null. */
  #scan(chunk: Uint8Array): Violation | null {
    const end = chunk.length
    const max = this.#max
    // Work on locals: field access through `this` in the loop is measurably slower.
    let state = this.#state
    let remaining = this.#remaining
    let length = this.#length
    let shift = this.#shift
    let i = 0

    while (i < end) {
      if (state === TYPE && end - i >= 5) {
        // Fast path, taken for almost every packet: the whole fixed header (at most 5 bytes) is in this
        // chunk, so decode it straight away and jump over the body. Byte 1 (type/flags) is mqtt-packet's job.
        let pos = i + 1
        let byte = chunk[pos++] as number
        length = byte & 0x7f
        if (byte > 0x7f) {
          byte = chunk[pos++] as number
          length |= (byte & 0x7f) << 7
          if (byte > 0x7f) {
            byte = chunk[pos++] as number
            length |= (byte & 0x7f) << 14
            if (byte > 0x7f) {
              byte = chunk[pos++] as number
              length |= (byte & 0x7f) << 21
              // The 4th length byte may not continue: a 5th is malformed [MQTT-1.5.5].
              if (byte > 0x7f) return this.#fail('malformed_length', null)
            }
          }
        }
        if (pos - i + length > max) return this.#fail('packet_too_large', length)
        i = pos + length
        if (i > end) {
          remaining = i - end
          state = BODY
          break
        }
      } else if (state === BODY) {
        const available = end - i
        if (remaining > available) {
          remaining -= available
          break
        }
        i += remaining
        remaining = 0
        state = TYPE
      } else if (state === TYPE) {
        // Slow path from here on: a header split across chunks, decoded one byte per call if need be.
        i++
        state = LENGTH
        length = 0
        shift = 0
      } else {
        const byte = chunk[i++] as number
        length |= (byte & 0x7f) << shift
        shift += 7
        if (byte > 0x7f) {
          if (shift === 28) return this.#fail('malformed_length', null)
        } else if (1 + shift / 7 + length > max) {
          return this.#fail('packet_too_large', length)
        } else if (length === 0) {
          state = TYPE
        } else {
          remaining = length
          state = BODY
        }
      }
    }

    this.#state = state
    this.#remaining = remaining
    this.#length = length
    this.#shift = shift
    return null
  }

  #fail(reason: Violation, declared: number | null): Violation {
    this.#state = DEAD
    this.#declared = declared
    return reason
  }

  #violate(reason: Violation): void {
    let err: Error | undefined
    try {
      this.#onViolation(reason, this.#declared)
    } catch (e) {
      // Throwing inside a 'data' handler would crash the process; surface it on the guard instead.
      err = e instanceof Error ? e : new Error(String(e))
    }
    // No error on a plain violation: onViolation is the report; an 'error' would be logged twice by the broker.
    this.destroy(err)
  }

  #onEnd = (): void => {
    this.#eof = true
    this.push(null)
  }

  #onError = (err: Error): void => {
    this.destroy(err)
  }

  #onClose = (): void => {
    if (this.destroyed) return
    // After a clean EOF the consumer may still hold unread packets (e.g. PUBLISH then DISCONNECT): let it drain.
    if (this.#eof && !this.readableEnded) {
      this.once('end', () => this.destroy())
      return
    }
    this.destroy()
  }

  override _read(): void {
    if (this.#socketPaused) {
      this.#socketPaused = false
      this.socket.resume()
    }
  }

  // The callback fires when the socket has taken the bytes, so the guard's own buffer provides backpressure.
  override _write(chunk: Buffer | string, encoding: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.socket.write(chunk, encoding, cb)
  }

  // mqtt-packet corks and writes each packet as several small buffers; hand them over as one batch.
  override _writev(
    chunks: Array<{ chunk: Buffer | string; encoding: BufferEncoding }>,
    cb: (err?: Error | null) => void,
  ): void {
    const socket = this.socket
    const last = chunks.length - 1
    socket.cork()
    for (let i = 0; i < last; i++) {
      const c = chunks[i]!
      socket.write(c.chunk, c.encoding)
    }
    const c = chunks[last]!
    socket.write(c.chunk, c.encoding, cb)
    socket.uncork()
  }

  override _final(cb: (err?: Error | null) => void): void {
    // Errors already reach us via the socket's 'error' event; don't fail 'finish' twice.
    if (this.socket.writableEnded || this.socket.destroyed) cb()
    else this.socket.end(() => cb())
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.socket.destroyed) this.socket.destroy()
    cb(err)
  }
}

export function guardConnection(socket: Duplex, opts: PacketGuardOptions): PacketGuard {
  return new PacketGuard(socket, opts)
}
