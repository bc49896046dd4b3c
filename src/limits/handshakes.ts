// A cap on TLS handshakes in progress. A connect storm (thousands of trackers back after a cell-network blip) would
// otherwise start every handshake at once: each gets a sliver of CPU, all of them outlive their timeouts and nobody
// connects. Here at most `max` run at a time; further TCP connections wait unread (pauseOnConnect: their ClientHello
// stays in the kernel) in a FIFO queue and are handed to TLS as slots free, so the storm is served at the machine's
// handshake rate. A connection beyond the queue is closed at once, and so is one that waited longer than `maxWaitMs`:
// its device has most likely given up (CONNACK timeout) and reconnects with back-off, and handing it to TLS would
// spend a slot on a dead peer. Without that bound a queue longer than the devices' timeout collapses: every slot
// goes to connections already abandoned and nobody connects (measured: 50,000 trackers, 26 connects/s of 275).
import type net from 'node:net'
import type tls from 'node:tls'
import type { Logger } from '../log.js'
import type { LimitMetrics } from './metrics.js'

export interface HandshakeCapOptions {
  max: number
  maxQueued: number
  /** a queued connection older than this is closed instead of handed to TLS (0 = no bound) */
  maxWaitMs: number
  metrics: LimitMetrics
  log: Logger
  /** the clock (tests) */
  now?: () => number
}

interface Waiting {
  socket: net.Socket
  at: number
}

type ConnectionListener = (this: tls.Server, socket: net.Socket) => void

/** Installs the cap on a tls.Server created by tls.createServer (before it listens). */
export function capHandshakes(server: tls.Server, opts: HandshakeCapOptions): void {
  const { max, maxQueued, maxWaitMs, metrics, log } = opts
  const now = opts.now ?? Date.now
  // tls.Server starts the handshake in its own 'connection' listener; it runs when a slot is free instead.
  const [startTls] = server.listeners('connection') as ConnectionListener[]
  if (!startTls) throw new Error('capHandshakes: not a tls.Server')
  server.removeListener('connection', startTls)
  ;(server as unknown as { pauseOnConnect: boolean }).pauseOnConnect = true
  let inProgress = 0
  // FIFO as an array with a moving head (shift() is O(n) on a 20,000-deep queue, once per handshake).
  // Slots before `head` are cleared (undefined) so the sockets they held can be collected.
  let queue: (Waiting | undefined)[] = []
  let head = 0
  const queued = () => queue.length - head
  const take = (): Waiting | undefined => {
    const w = queue[head]
    if (!w) return undefined
    queue[head++] = undefined
    if (head > 1024 && head * 2 > queue.length) {
      queue = queue.slice(head)
      head = 0
    }
    return w
  }
  /** Closes the connections at the front that waited too long (the oldest are at the front). */
  const expire = () => {
    if (maxWaitMs <= 0) return
    const t = now()
    for (let w = queue[head]; w && t - w.at > maxWaitMs; w = queue[head]) {
      take()
      metrics.handshakeExpired.inc()
      w.socket.destroy()
    }
  }
  // The gauges add up every capped listener (devices' 8883 and the token listener): moved by deltas, never set.
  const shown = { inProgress: 0, queued: 0 }
  const show = () => {
    const d = inProgress - shown.inProgress
    const q = queued() - shown.queued
    if (d !== 0) metrics.handshakesInProgress.inc(d)
    if (q !== 0) metrics.handshakesQueued.inc(q)
    shown.inProgress = inProgress
    shown.queued = queued()
  }
  const start = (socket: net.Socket) => {
    inProgress++
    show()
    startTls.call(server, socket)
  }
  // A handshake ends in one of these two events (a peer that hangs up or times out: tlsClientError), but not always
  // in only one: a handshake whose timeout fired while the loop was stalled (a starved broker) still completes
  // afterwards and emits secureConnection too. Counting it twice drove the count negative under a connect storm
  // (measured: -663 on one node) and lifted the cap, so each TLS socket is counted down once.
  const ended = new WeakSet<tls.TLSSocket>()
  const finished = (socket: tls.TLSSocket) => {
    if (ended.has(socket)) return
    ended.add(socket)
    inProgress--
    // A connection that closed while waiting is handed over all the same: it fails at once (tlsClientError).
    expire()
    while (inProgress < max) {
      const w = take()
      if (!w) break
      start(w.socket)
    }
    show()
  }
  server.prependListener('secureConnection', (socket: tls.TLSSocket) => {
    // pauseOnConnect leaves the TLS socket paused too: reading resumes once it is secure (the handler that follows
    // attaches its reader in the same tick).
    if (socket.readableFlowing === false) socket.resume()
    finished(socket)
  })
  server.prependListener('tlsClientError', (_err: Error, socket: tls.TLSSocket) => finished(socket))
  server.on('connection', (socket: net.Socket) => {
    if (inProgress < max) {
      start(socket)
      return
    }
    expire()
    if (queued() >= maxQueued) {
      metrics.handshakeOverflows.inc()
      log.debug({ remoteAddress: socket.remoteAddress }, 'TLS handshake queue full: connection closed')
      socket.destroy()
      show()
      return
    }
    metrics.handshakeWaits.inc()
    // An unread socket rarely errors, but an 'error' without a listener would end the process.
    socket.on('error', () => {})
    queue.push({ socket, at: now() })
    show()
  })
}
