// The PROXY protocol gate in front of a listener: reads a PROXY v1/v2 header, but only from the configured load
// balancers, before the listener's own protocol (MQTT, TLS, HTTP) sees a byte. What it trusts and why:
// - the client address and port in a header, only when the TCP peer is a configured load balancer (a header from
//   anywhere else is a spoofing attempt: closed, counted, logged);
// - on the plain MQTT listener with `proxy.tlsIdentity`, the device certificate identity the load balancer passes
//   after terminating TLS (HAProxy `proxy-v2-options ssl,cert-cn,unique-id` with `unique-id-format
//   %[ssl_c_der,sha2(256),hex]`): the CN names the device and the SHA-256 of the certificate's DER is checked against
//   the registered fingerprint exactly as for a certificate pulsegate verified itself (see docs/load-balancer.md).
// Modes: off (no header expected), optional (a trusted peer may send one; direct clients connect as before),
// required (only load balancers, always with a header).
import net from 'node:net'
import { Counter, type Registry } from 'prom-client'
import type { Logger } from '../log.js'
import type { CertIdentity } from './connection.js'
import {
  PP2_CLIENT_CERT_CONN,
  PP2_CLIENT_CERT_SESS,
  PP2_CLIENT_SSL,
  PP2_TYPE_PULSEGATE_CERT_SHA256,
  PP2_TYPE_UNIQUE_ID,
  type ProxyHeader,
  parseProxyHeader,
} from './proxy-protocol.js'

export type ProxyMode = 'off' | 'optional' | 'required'

export interface ProxySettings {
  mode: ProxyMode
  /** load balancers' addresses or CIDRs */
  trusted: readonly string[]
  headerTimeoutMs: number
  /** accept the TLS identity the load balancer passes (plain MQTT listener behind a TLS-terminating frontend) */
  tlsIdentity: boolean
}

/** Who is on the other end of a connection, after the PROXY header (if any). */
export interface Peer {
  address: string
  port: number | null
  family: string
  /** the load balancer this came through, when a header was accepted */
  lb: { address: string; port: number | null; version: 1 | 2 } | null
  /** the device certificate identity the load balancer verified (only with tlsIdentity) */
  lbCert: CertIdentity | null
}

const counters = new WeakMap<Registry, Counter>()

/** pulsegate_proxy_refusals_total{reason, listener}: one counter per metrics registry. */
export function proxyRefusals(registry: Registry): Counter {
  let c = counters.get(registry)
  if (!c) {
    c = new Counter({
      name: 'pulsegate_proxy_refusals_total',
      help: 'connections closed by the PROXY protocol gate, by reason (untrusted_header, missing_header, …)',
      labelNames: ['reason', 'listener'],
      registers: [registry],
    })
    counters.set(registry, c)
  }
  return c
}

export class TrustList {
  readonly #list = new net.BlockList()
  readonly size: number
  constructor(entries: readonly string[]) {
    for (const e of entries) {
      const [addr = '', bits] = e.split('/')
      const type = net.isIPv6(addr) ? 'ipv6' : 'ipv4'
      if (bits === undefined) this.#list.addAddress(addr, type)
      else this.#list.addSubnet(addr, Number(bits), type)
    }
    this.size = entries.length
  }
  has(address: string | undefined): boolean {
    if (!address) return false
    const v4 = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1]
    if (v4) return this.#list.check(v4, 'ipv4') || this.#list.check(address, 'ipv6')
    return this.#list.check(address, net.isIPv6(address) ? 'ipv6' : 'ipv4')
  }
}

/** Peers of gated sockets, found again from the socket a server hands over (a TLSSocket shares the raw socket's
 *  remote address and port, so that pair is the key while the connection lives). */
export class PeerTable {
  readonly #peers = new Map<string, Peer>()
  set(sock: net.Socket, peer: Peer): void {
    const k = key(sock)
    this.#peers.set(k, peer)
    sock.once('close', () => this.#peers.delete(k))
  }
  get(sock: { remoteAddress?: string | undefined; remotePort?: number | undefined }): Peer | undefined {
    return this.#peers.get(key(sock))
  }
}

function key(sock: { remoteAddress?: string | undefined; remotePort?: number | undefined }): string {
  return `${sock.remoteAddress}|${sock.remotePort}`
}

export function directPeer(sock: {
  remoteAddress?: string | undefined
  remotePort?: number | undefined
  remoteFamily?: string | undefined
}): Peer {
  return {
    address: sock.remoteAddress ?? '',
    port: sock.remotePort ?? null,
    family: sock.remoteFamily ?? '',
    lb: null,
    lbCert: null,
  }
}

export interface GateDeps {
  listener: string
  settings: ProxySettings
  trusted: TrustList
  refusals: Counter
  log: Logger
}

/**
 * Puts the gate in front of a server's own connection handling: the server's 'connection' listeners run once the
 * header is read (the bytes after it are unshifted back for them). With mode off nothing changes.
 */
export function installProxyGate(
  server: net.Server,
  deps: GateDeps,
  peers: PeerTable,
  /** how the bytes after the header reach the server: 'unshift' back into the socket's stream, which keeps
   *  flowing into the listener's 'data' handler (net); 'pause' and unshift, for a TLS server that wraps the socket;
   *  or 'emit' them as a 'data' event after the server attached (plain HTTP reads the native handle directly —
   *  llhttp's consume — so an unshifted buffer would never be parsed) */
  replay: Replay = 'unshift',
): void {
  if (deps.settings.mode === 'off') return
  const inner = server.listeners('connection') as Array<(sock: net.Socket) => void>
  server.removeAllListeners('connection')
  server.on('connection', (sock: net.Socket) => {
    gate(sock, deps, replay, (peer) => {
      peers.set(sock, peer)
      for (const fn of inner) fn.call(server, sock)
    })
  })
}

export type Replay = 'unshift' | 'pause' | 'emit'

function gate(sock: net.Socket, deps: GateDeps, replay: Replay, admit: (peer: Peer) => void): void {
  const { settings, listener, log } = deps
  const trusted = deps.trusted.has(sock.remoteAddress)
  let timer: NodeJS.Timeout | undefined
  const refuse = (reason: string, extra: Record<string, unknown> = {}) => {
    cleanup()
    deps.refusals.inc({ reason, listener })
    log.warn(
      { listener, remoteAddress: sock.remoteAddress, remotePort: sock.remotePort, reason, ...extra },
      'PROXY protocol: connection refused',
    )
    sock.destroy()
  }
  sock.on('error', () => {})
  let buf: Buffer = Buffer.alloc(0)
  timer = setTimeout(() => refuse('header_timeout'), settings.headerTimeoutMs)
  function cleanup() {
    clearTimeout(timer)
    sock.off('data', onData)
    sock.off('close', cleanup)
  }
  const onData = (chunk: Buffer) => {
    buf = buf.length === 0 ? chunk : Buffer.concat([buf, chunk])
    const r = parseProxyHeader(buf)
    if (r.kind === 'more') return
    if (r.kind === 'none') {
      if (settings.mode === 'required') return refuse('missing_header')
      return handOver(0, directPeer(sock))
    }
    if (!trusted) return refuse('untrusted_header')
    if (r.kind === 'error') return refuse('malformed_header', { detail: r.reason })
    const peer = peerOf(sock, r.header)
    if (settings.tlsIdentity) {
      const cert = lbCertificate(r.header)
      if (cert === 'invalid') return refuse('lb_certificate_unverified')
      peer.lbCert = cert
    }
    log.debug({ listener, client: `${peer.address}:${peer.port}`, lb: sock.remoteAddress }, 'PROXY header accepted')
    handOver(r.consumed, peer)
  }
  const handOver = (consumed: number, peer: Peer) => {
    cleanup()
    const rest = consumed < buf.length ? buf.subarray(consumed) : null
    if (replay === 'emit') {
      admit(peer)
      if (rest) sock.emit('data', rest)
      return
    }
    // An explicit pause() would stick: a 'data' listener added later does not resume a paused stream.
    if (replay === 'pause') sock.pause()
    if (rest) sock.unshift(rest)
    admit(peer)
  }
  sock.on('data', onData)
  sock.on('close', cleanup)
  // A server with pauseOnConnect (the TLS handshake cap, src/limits/handshakes.ts) hands the socket over paused, and
  // a 'data' listener does not resume a stream paused that way: the header would never be read.
  if (sock.readableFlowing === false) sock.resume()
  // Only load balancers may connect here; no need to read what a stranger sends.
  if (settings.mode === 'required' && !trusted) refuse('untrusted_source')
}

function peerOf(sock: net.Socket, h: ProxyHeader): Peer {
  const lb = { address: sock.remoteAddress ?? '', port: sock.remotePort ?? null, version: h.version }
  // LOCAL: the load balancer speaking for itself (health checks), so the socket's own address is the peer.
  if (!h.addresses) return { ...directPeer(sock), lb }
  const a = h.addresses
  return { address: a.sourceAddress, port: a.sourcePort, family: a.family, lb, lbCert: null }
}

/**
 * The device certificate the load balancer verified, from PP2_TYPE_SSL (client bits + verify result + CN) and the
 * certificate's SHA-256 (PP2_TYPE_UNIQUE_ID from HAProxy's unique-id-format, or our application TLV 0xE0).
 * null: no client certificate in this session (an app, or a plain-TCP frontend). 'invalid': the LB claims TLS with a
 * client certificate but did not verify it, or left out what the fingerprint check needs.
 */
export function lbCertificate(h: ProxyHeader): CertIdentity | null | 'invalid' {
  const ssl = h.ssl
  if (!ssl || (ssl.client & PP2_CLIENT_SSL) === 0) return null
  if ((ssl.client & (PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS)) === 0) return null
  if (ssl.verify !== 0 || !ssl.cn) return 'invalid'
  const raw = h.tlvs.get(PP2_TYPE_PULSEGATE_CERT_SHA256) ?? h.tlvs.get(PP2_TYPE_UNIQUE_ID)
  const hex = raw?.toString('latin1').trim().replace(/:/g, '')
  if (!hex || !/^[0-9a-fA-F]{64}$/.test(hex)) return 'invalid'
  // The format of tls.PeerCertificate.fingerprint256, which the registry stores.
  const fingerprint256 = hex.toUpperCase().match(/../g)?.join(':') ?? ''
  return { subject: { CN: ssl.cn }, fingerprint256 }
}
