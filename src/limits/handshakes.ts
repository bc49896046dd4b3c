// A cap on TLS handshakes in progress. A connect storm (thousands of trackers back after a cell-network blip) would
// otherwise start every handshake at once: each gets a sliver of CPU, all of them outlive their timeouts and nobody
// connects. Here at most `max` run at a time; further TCP connections wait unread (pauseOnConnect: their ClientHello
// stays in the kernel) in a FIFO queue and are handed to TLS as slots free, so the storm is served at the machine's
// handshake rate. A connection beyond the queue is closed at once.
import type net from 'node:net'
import type tls from 'node:tls'
import type { Logger } from '../log.js'
import type { LimitMetrics } from './metrics.js'

export interface HandshakeCapOptions {
  max: number
  maxQueued: number
  metrics: LimitMetrics
  log: Logger
}

type ConnectionListener = (this: tls.Server, socket: net.Socket) => void

/** Installs the cap on a tls.Server created by tls.createServer (before it listens). */
export function capHandshakes(server: tls.Server, opts: HandshakeCapOptions): void {
  const { max, maxQueued, metrics, log } = opts
  // tls.Server starts the handshake in its own 'connection' listener; it runs when a slot is free instead.
  const [startTls] = server.listeners('connection') as ConnectionListener[]
  if (!startTls) throw new Error('capHandshakes: not a tls.Server')
  server.removeListener('connection', startTls)
  ;(server as unknown as { pauseOnConnect: boolean }).pauseOnConnect = true
  let inProgress = 0
  const queue: net.Socket[] = []
  // The gauges add up every capped listener (devices' 8883 and the token listener): moved by deltas, never set.
  const shown = { inProgress: 0, queued: 0 }
  const show = () => {
    const d = inProgress - shown.inProgress
    const q = queue.length - shown.queued
    if (d !== 0) metrics.handshakesInProgress.inc(d)
    if (q !== 0) metrics.handshakesQueued.inc(q)
    shown.inProgress = inProgress
    shown.queued = queue.length
  }
  const start = (socket: net.Socket) => {
    inProgress++
    show()
    startTls.call(server, socket)
  }
  // Every handshake ends in exactly one of these two events (a peer that hangs up or times out: tlsClientError).
  const finished = () => {
    inProgress--
    // A connection that closed while waiting is handed over all the same: it fails at once (tlsClientError).
    while (inProgress < max && queue.length > 0) start(queue.shift() as net.Socket)
    show()
  }
  server.prependListener('secureConnection', (socket: tls.TLSSocket) => {
    // pauseOnConnect leaves the TLS socket paused too: reading resumes once it is secure (the handler that follows
    // attaches its reader in the same tick).
    if (socket.readableFlowing === false) socket.resume()
    finished()
  })
  server.prependListener('tlsClientError', finished)
  server.on('connection', (socket: net.Socket) => {
    if (inProgress < max) {
      start(socket)
      return
    }
    if (queue.length >= maxQueued) {
      metrics.handshakeOverflows.inc()
      log.debug({ remoteAddress: socket.remoteAddress }, 'TLS handshake queue full: connection closed')
      socket.destroy()
      return
    }
    metrics.handshakeWaits.inc()
    // An unread socket rarely errors, but an 'error' without a listener would end the process.
    socket.on('error', () => {})
    queue.push(socket)
    show()
  })
}
