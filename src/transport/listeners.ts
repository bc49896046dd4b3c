// Listeners: MQTT/TCP, MQTT/TLS with client certificates required (devices), MQTT/TLS with the certificate optional
// (token clients: bridges, apps), MQTT over WebSocket at /mqtt on the HTTP port (WSS with tls.wss).
// Every stream passes the packet guard before Aedes sees a byte, so an oversized packet is cut at its header.
// With `proxy.<listener>` on, the PROXY protocol gate (proxy-gate.ts) runs first: the client address (and, behind a
// TLS-terminating load balancer, the device certificate identity) then comes from a trusted load balancer's header.
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import type { Duplex } from 'node:stream'
import tls from 'node:tls'
import { createWebSocketStream, WebSocketServer } from 'ws'
import type { Principal } from '../identity/principal.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { type ListenerName, setConnInfo } from './connection.js'
import { guardConnection } from './packet-guard.js'
import { installTicketKeys, type ResumptionOptions, resumptionServerOptions } from './tls-tickets.js'
import {
  directPeer,
  installProxyGate,
  type Peer,
  PeerTable,
  type ProxyMode,
  type Replay,
  proxyRefusals,
  TrustList,
} from './proxy-gate.js'

/** Aedes' handle(): returns the new client (its connDetails are filled in here) */
export type HandleFn = (stream: Duplex, req?: http.IncomingMessage) => unknown

export interface ProxyConfig {
  mqtt: ProxyMode
  mqtts: ProxyMode
  http: ProxyMode
  trusted: readonly string[]
  headerTimeoutMs: number
  tlsIdentity: boolean
}

export interface TransportDeps {
  handle: HandleFn
  maxPacketBytes: number
  metrics: Metrics
  log: Logger
  /** PROXY protocol per listener; unset → off everywhere */
  proxy?: ProxyConfig
}

/** One peer table per listener: a load balancer may use one source port towards two of our ports at once. */
function gateFor(
  server: net.Server,
  deps: TransportDeps,
  which: 'mqtt' | 'mqtts' | 'http',
  replay: Replay = 'unshift',
): PeerTable {
  const peers = new PeerTable()
  const p = deps.proxy
  if (p && p[which] !== 'off') {
    const settings = {
      mode: p[which],
      trusted: p.trusted,
      headerTimeoutMs: p.headerTimeoutMs,
      // The load balancer's word on TLS identity only where pulsegate does not do TLS itself.
      tlsIdentity: which === 'mqtt' && p.tlsIdentity,
    }
    const refusals = proxyRefusals(deps.metrics.registry)
    installProxyGate(
      server,
      { listener: which, settings, trusted: new TrustList(p.trusted), refusals, log: deps.log },
      peers,
      replay,
    )
  }
  return peers
}

function admit(
  deps: TransportDeps,
  listener: ListenerName,
  socket: Duplex,
  peer: Peer,
  extra: {
    peerCert?: tls.PeerCertificate | null
    certRefused?: string | null
    upgradePrincipal?: Principal | null
    req?: http.IncomingMessage
  },
): void {
  const remoteAddress = peer.address
  const guarded = guardConnection(socket, {
    maxPacketBytes: deps.maxPacketBytes,
    onViolation: (reason, declared) => {
      deps.metrics.guardCuts.inc({ reason, listener })
      deps.log.warn({ listener, remoteAddress, reason, declared }, 'connection cut by the packet guard')
    },
  })
  const certFromLb = !extra.peerCert && peer.lbCert !== null
  setConnInfo(guarded, {
    listener,
    remoteAddress,
    remotePort: peer.port,
    via: peer.lb,
    peerCert: extra.peerCert ?? peer.lbCert,
    certFromLb,
    certRefused: extra.certRefused ?? null,
    upgradePrincipal: extra.upgradePrincipal ?? null,
  })
  // A socket error before Aedes attaches its own listener must not become an uncaught exception.
  socket.on('error', () => {})
  const client = deps.handle(guarded, extra.req)
  // Aedes' own field for this (the shape of aedes-protocol-decoder's), so per-IP code can read the client address
  // from the Aedes client without knowing about PROXY.
  if (typeof client === 'object' && client !== null) {
    Object.assign(client, {
      connDetails: {
        ipAddress: peer.address,
        port: peer.port,
        ipFamily: peer.family,
        isWebsocket: listener === 'ws' || listener === 'wss',
        isProxy: peer.lb?.version ?? 0,
        certAuthorized: extra.peerCert ? true : certFromLb,
      },
    })
  }
}

export function createTcpServer(deps: TransportDeps): net.Server {
  const server = net.createServer({ noDelay: true }, (sock) =>
    admit(deps, 'mqtt', sock, peers.get(sock) ?? directPeer(sock), {}),
  )
  const peers = gateFor(server, deps, 'mqtt')
  server.maxConnections = 200_000
  return server
}

export interface TlsMaterial {
  key: Buffer
  cert: Buffer
  ca: Buffer
}

/** Why a client certificate failed verification, from the TLS layer's error text (a metric label). */
function certRefusal(message: string): string {
  return /certificate required|peer did not return a certificate/i.test(message)
    ? 'no_certificate'
    : /expired/i.test(message)
      ? 'certificate_expired'
      : /unknown.ca|self.signed|unable.to.get|verify|not.yet.valid|revoked|signature/i.test(message)
        ? 'untrusted_certificate'
        : 'handshake_failed'
}

/**
 * MQTT/TLS. `required` (8883, devices): no certificate, or one that does not verify, fails in the handshake and never
 * reaches MQTT. `optional` (the token listener, 8884): the certificate is requested but not required, so a phone bridge
 * or an app can use TLS with only its JWT; a certificate that is presented must still verify — authenticate() refuses
 * it (certRefused), whatever token comes with it — and a valid one makes the client a device as on 8883.
 */
export function createTlsServer(
  deps: TransportDeps,
  material: TlsMaterial,
  resume: ResumptionOptions,
  clientCert: 'required' | 'optional' = 'required',
): tls.Server {
  const listener: ListenerName = clientCert === 'required' ? 'mqtts' : 'mqtts-token'
  const server = tls.createServer(
    {
      ...resumptionServerOptions(resume),
      key: material.key,
      cert: material.cert,
      ca: material.ca,
      requestCert: true,
      rejectUnauthorized: clientCert === 'required',
      minVersion: 'TLSv1.2',
      handshakeTimeout: 10_000,
    },
    (sock) => {
      deps.metrics.tlsHandshakes.inc({ listener, kind: sock.isSessionReused() ? 'resumed' : 'full' })
      const cert = sock.getPeerCertificate()
      const presented = Boolean(cert?.raw)
      // rejectUnauthorized is off only on the optional listener: there `authorized` is checked here, never assumed.
      const verified = presented && sock.authorized
      const certRefused =
        presented && !verified ? certRefusal(String(sock.authorizationError ?? 'unverified certificate')) : null
      admit(deps, listener, sock, peers.get(sock) ?? directPeer(sock), {
        peerCert: verified ? cert : null,
        certRefused,
      })
    },
  )
  installTicketKeys(server, resume)
  const peers = gateFor(server, deps, 'mqtts', 'pause')
  server.on('tlsClientError', (err, sock) => {
    const reason = certRefusal(err.message)
    deps.metrics.authRefusals.inc({ reason, listener })
    const peer = peers.get(sock) ?? directPeer(sock)
    deps.log.info(
      { remoteAddress: peer.address, remotePort: peer.port, reason, err: err.message },
      'TLS handshake refused',
    )
    // With a listener here Node leaves the socket open: a handshake that timed out while the loop was stalled would
    // still complete afterwards and be admitted as if it had not failed.
    sock.destroy()
  })
  return server
}

export interface HttpDeps extends TransportDeps {
  /** verifies an `Authorization: Bearer` token at the upgrade; throws to refuse with 401 */
  verifyBearer(token: string): Promise<Principal>
  onRequest(req: http.IncomingMessage, res: http.ServerResponse): void
}

/** HTTP (metrics, health, admin RPC, the race-control page) and MQTT over WebSocket at /mqtt on one port. */
export function createHttpServer(deps: HttpDeps, tlsMaterial: TlsMaterial | null): http.Server {
  const server = tlsMaterial
    ? https.createServer({ key: tlsMaterial.key, cert: tlsMaterial.cert }, deps.onRequest)
    : http.createServer(deps.onRequest)
  const listener: ListenerName = tlsMaterial ? 'wss' : 'ws'
  const peers = gateFor(server, deps, 'http', tlsMaterial ? 'pause' : 'emit')
  // maxPayload bounds a single WebSocket message; the packet guard bounds MQTT packets spanning several messages.
  const wss = new WebSocketServer({ noServer: true, maxPayload: deps.maxPacketBytes + 1024, perMessageDeflate: false })
  server.on('upgrade', (req, socket, head) => {
    socket.on('error', () => {})
    const url = new URL(req.url ?? '/', 'http://x')
    if (url.pathname !== '/mqtt') {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n')
      return
    }
    const auth = req.headers.authorization
    const bearer = auth && /^Bearer\s+(.+)$/i.exec(auth)?.[1]
    const proceed = (principal: Principal | null) =>
      wss.handleUpgrade(req, socket, head, (ws) => {
        const stream = createWebSocketStream(ws)
        admit(deps, listener, stream, peers.get(req.socket) ?? directPeer(req.socket), {
          upgradePrincipal: principal,
          req,
        })
      })
    if (!bearer) {
      proceed(null) // the token may come as the MQTT password instead
      return
    }
    deps.verifyBearer(bearer).then(proceed, (err: Error & { reason?: string }) => {
      // A bad token never costs an MQTT session: refused at the HTTP layer.
      deps.metrics.authRefusals.inc({ reason: err.reason ?? 'bad_token', listener })
      socket.end('HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
    })
  })
  return server
}

/** A listener's port is taken: says which `PULSEGATE_*_PORT` to set (the CLI prints it without a stack trace). */
export class PortInUseError extends Error {
  override readonly name = 'PortInUseError'
  constructor(
    readonly port: number,
    readonly host: string,
    readonly variable: string,
  ) {
    super(
      `port ${port} on ${host} is already in use (another pulsegate, or e.g. Mosquitto on 1883): set ${variable} to a ` +
        `free port (0 picks one), e.g. ${variable}=${port + 1}`,
    )
  }
}

/** Binds; `variable` names the setting of this port for the error when it is taken. */
export function listen(server: net.Server, port: number, host: string, variable = 'the port'): Promise<number> {
  return new Promise((resolve, reject) => {
    const fail = (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new PortInUseError(port, host, variable) : err)
    server.once('error', fail)
    server.listen({ port, host, backlog: 4096 }, () => {
      server.off('error', fail)
      resolve((server.address() as net.AddressInfo).port)
    })
  })
}
