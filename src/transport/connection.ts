// What the transport learned about a connection before MQTT starts: which listener, the peer, the verified client
// certificate (mTLS), a token already checked at the WebSocket upgrade. Keyed by the stream handed to Aedes.
import type { Duplex } from 'node:stream'
import type { PeerCertificate } from 'node:tls'
import type { Principal } from '../identity/principal.js'

export type ListenerName = 'mqtt' | 'mqtts' | 'ws' | 'wss'

export interface ConnInfo {
  listener: ListenerName
  remoteAddress: string
  /** set only when the TLS layer verified it against the device CA */
  peerCert: PeerCertificate | null
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
