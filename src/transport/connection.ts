// What the transport learned about a connection before MQTT starts: which listener, the peer (the client's own
// address when a trusted load balancer passed it in a PROXY header), the verified client certificate (mTLS, or the
// identity a TLS-terminating load balancer verified), a token already checked at the WebSocket upgrade. Keyed by the
// stream handed to Aedes.
import type { Duplex } from 'node:stream'
import type { PeerCertificate } from 'node:tls'
import type { Principal } from '../identity/principal.js'

export type ListenerName = 'mqtt' | 'mqtts' | 'ws' | 'wss'

/** What identifies a device certificate: tls.PeerCertificate has it, and so does a load balancer's PROXY v2 TLVs. */
export interface CertIdentity {
  subject?: { CN?: string | string[] | undefined } | undefined
  subjectaltname?: string | undefined
  /** SHA-256 of the DER, tls.PeerCertificate format (colon-separated upper-case hex) */
  fingerprint256: string
  /** end of validity (tls.PeerCertificate format); absent when a load balancer vouched for the certificate */
  valid_to?: string | undefined
}

export interface ConnInfo {
  listener: ListenerName
  /** the client's address: from the PROXY header when a trusted load balancer sent one, else the socket's */
  remoteAddress: string
  remotePort?: number | null
  /** the load balancer the connection came through (PROXY protocol), if any */
  via?: { address: string; port: number | null; version: 1 | 2 } | null
  /** set only when the TLS layer verified it against the device CA, or a trusted load balancer did (tlsIdentity) */
  peerCert: CertIdentity | PeerCertificate | null
  /** true when peerCert is the load balancer's word (TLS terminated there) */
  certFromLb?: boolean
  /** a bearer token verified at the WebSocket upgrade */
  upgradePrincipal: Principal | null
}

const infos = new WeakMap<object, ConnInfo>()

export function setConnInfo(stream: Duplex, info: ConnInfo): void {
  infos.set(stream, info)
}

export function connInfo(stream: unknown): ConnInfo | undefined {
  return typeof stream === 'object' && stream !== null ? infos.get(stream) : undefined
}

/** The client's address and port as pulsegate sees them (after PROXY), for logs and per-IP limits. */
export function clientAddress(client: { conn: unknown }): { address: string; port: number | null } | undefined {
  const info = connInfo(client.conn)
  return info ? { address: info.remoteAddress, port: info.remotePort ?? null } : undefined
}
