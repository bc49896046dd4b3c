// TLS session resumption (RFC 8446 §2.2, session tickets): a device that reconnects after a network blip presents the
// ticket of its last session and skips the certificate exchange, the chain verification and the signatures of a full
// handshake. The ticket key is derived from a shared secret and the current rotation period, so every node of a
// cluster holds the same key at the same moment (a device resumes on whichever node the load balancer picks) without
// any key exchange between nodes, and the key changes every period (a stolen key opens at most one period of tickets).
// Without a secret the key is random per process and per period: resumption then works on the same node only.
// A resumed session keeps the certificate of the full handshake; authenticate.ts re-checks it against the registry
// (revocation) and its validity dates on every CONNECT, resumed or not.
import crypto from 'node:crypto'
import type tls from 'node:tls'

export interface ResumptionOptions {
  /** false: no tickets are issued (every connect is a full handshake) */
  resumption: boolean
  /** shared by every node of a deployment; unset → a random key per process */
  ticketSecret?: string | undefined
  /** how long one ticket key is used, minutes */
  ticketRotationMinutes: number
  /** the ticket lifetime a client is told (RFC 8446 ticket_lifetime), seconds */
  sessionTimeoutS: number
}

/** Node's ticket key: 16 bytes key name, 16 bytes HMAC key, 16 bytes AES key (tls.Server#setTicketKeys). */
const TICKET_KEY_BYTES = 48

/** The ticket key of one rotation period, the same on every node that has the same secret. */
export function ticketKeyFor(secret: string, period: number): Buffer {
  return Buffer.from(
    crypto.hkdfSync('sha256', secret, 'pulsegate tls ticket key', `period ${period}`, TICKET_KEY_BYTES),
  )
}

/** The rotation period a moment falls in (periods are aligned to the epoch, so all nodes agree). */
export function periodAt(nowMs: number, rotationMinutes: number): number {
  return Math.floor(nowMs / (rotationMinutes * 60_000))
}

/** tls.createServer options for resumption (the ticket lifetime, or tickets off). */
export function resumptionServerOptions(o: ResumptionOptions): tls.TlsOptions {
  return o.resumption
    ? { sessionTimeout: o.sessionTimeoutS }
    : { secureOptions: crypto.constants.SSL_OP_NO_TICKET, sessionTimeout: 0 }
}

/**
 * Sets the key of the current period on `server` and replaces it at each period boundary until the server closes.
 * Tickets issued under the previous key stop resuming at the boundary (Node holds one key): those devices do one full
 * handshake and get a new ticket.
 */
export function installTicketKeys(server: tls.Server, o: ResumptionOptions, now: () => number = Date.now): void {
  if (!o.resumption) return
  const periodMs = o.ticketRotationMinutes * 60_000
  let timer: NodeJS.Timeout | null = null
  const apply = () => {
    const t = now()
    const period = periodAt(t, o.ticketRotationMinutes)
    server.setTicketKeys(o.ticketSecret ? ticketKeyFor(o.ticketSecret, period) : crypto.randomBytes(TICKET_KEY_BYTES))
    // +1 ms: fire just after the boundary, in the next period
    timer = setTimeout(apply, (period + 1) * periodMs - t + 1)
    timer.unref()
  }
  apply()
  server.once('close', () => {
    if (timer) clearTimeout(timer)
  })
}
