// Load-generator process for bench/connect-mtls.ts (forked with an IPC channel; never run directly). Opens one mTLS
// MQTT connection per device at `rampPerSec` new connections per second (0 = as fast as possible), with at most
// `concurrency` handshakes in flight, records TLS-connect → CONNACK latency and when each CONNACK arrived, then keeps
// the connections open and idle until told to close them.
import fs from 'node:fs'
import tls from 'node:tls'
import { LiteClient } from './mqtt-lite.js'
import { encodeHistogram, latencyHistogram } from './stats.js'
import { exitWithParent, type WorkerDevice } from './worker-protocol.js'

export interface ConnectWorkerInit {
  type: 'init'
  host: string
  port: number
  caPath: string
  devices: WorkerDevice[]
  /** new connections per second for this worker; 0 = unlimited (bounded by `concurrency`) */
  rampPerSec: number
  concurrency: number
  keepaliveS: number
  timeoutMs: number
  /** stop opening connections once this many have failed (the `--until-fail` ceiling search); 0 = open them all */
  stopAfterFailures: number
}

/**
 * Reconnect storm (--storm): close every connection, then open them all again as fast as possible (bounded by
 * `concurrency`), presenting each device's last session ticket when `resume` is set; answered by 'connected'.
 */
export interface ConnectWorkerStorm {
  type: 'storm'
  resume: boolean
}

export type ToConnectWorker = ConnectWorkerInit | ConnectWorkerStorm | { type: 'close' }

export type FromConnectWorker =
  | {
      type: 'connected'
      ok: number
      failed: number
      errors: string[]
      hist: string
      /** CONNACKs per 100 ms slot since this worker's start */
      timeline: number[]
      /** ms from start to the last CONNACK (or failure) */
      elapsedMs: number
      cpuMs: number
      /** connections closed by the server after their CONNACK, so far */
      droppedAfterConnect: number
      /** handshakes that resumed a TLS session (client side: tls.TLSSocket#isSessionReused) */
      resumed: number
    }
  | { type: 'closed'; droppedWhileIdle: number }
  /** every 5 s during the ramp, so a slow or stuck ramp is visible while it happens */
  | { type: 'progress'; ok: number; failed: number; inflight: number; elapsedMs: number }

const send = (m: FromConnectWorker) => process.send?.(m)
let clients: LiteClient[] = []
let dropped = 0
let closing = false
/** each device's latest session ticket */
const tickets = new Map<string, Buffer>()
let initMsg: ConnectWorkerInit | null = null

async function run(init: ConnectWorkerInit, resume = false): Promise<void> {
  const ca = fs.readFileSync(init.caPath)
  const h = latencyHistogram()
  const timeline: number[] = []
  const errors: string[] = []
  let ok = 0
  let failed = 0
  let resumed = 0
  let inflight = 0
  let next = 0
  let lastDone = 0
  // Keep-alive from the first CONNACK on: a slow ramp must not let early connections hit the broker's 1.5 × keepalive.
  const ping = setInterval(
    () => {
      for (const c of clients) if (c.connected) c.ping()
    },
    (init.keepaliveS * 1000) / 2,
  )
  ping.unref()
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  let n = init.devices.length
  const progress = setInterval(
    () => send({ type: 'progress', ok, failed, inflight, elapsedMs: performance.now() - t0 }),
    5000,
  )

  await new Promise<void>((resolveAll) => {
    const finishOne = () => {
      inflight--
      lastDone = performance.now() - t0
      // Ceiling search: after enough failures, open no more; the count reached is what the broker (or the machine)
      // could hold.
      if (init.stopAfterFailures > 0 && failed >= init.stopAfterFailures && n > next) n = next
      if (ok + failed === n && inflight === 0) resolveAll()
      else pump()
    }
    const startOne = () => {
      const dev = init.devices[next++] as WorkerDevice
      inflight++
      let secureContext: tls.SecureContext
      try {
        secureContext = tls.createSecureContext({
          key: fs.readFileSync(dev.keyPath),
          cert: fs.readFileSync(dev.certPath),
          ca,
        })
      } catch (err) {
        // This process is out of file descriptors (EMFILE: at ~20,000 connections the client side runs out before
        // reading the next key) or a certificate is unreadable: a failure of the client, not of the broker, said so.
        // Counted on the next turn, not here, so that a run of such failures does not recurse through pump().
        setImmediate(() => {
          failed++
          if (errors.length < 10) errors.push(`${dev.deviceId}: client side: ${(err as Error).message}`)
          finishOne()
        })
        return
      }
      const client = new LiteClient({
        host: init.host,
        port: init.port,
        clientId: dev.deviceId,
        secureContext,
        servername: 'localhost',
        keepaliveS: init.keepaliveS,
        ...(resume && tickets.has(dev.deviceId) ? { session: tickets.get(dev.deviceId) as Buffer } : {}),
        onSession: (t) => tickets.set(dev.deviceId, t),
        onPuback: () => {},
        onClose: () => {
          if (!closing) dropped++
        },
      })
      const t = performance.now()
      client.connect(init.timeoutMs).then(
        () => {
          const now = performance.now()
          h.recordValue(Math.max(1, Math.round((now - t) * 1000)))
          const slot = Math.floor((now - t0) / 100)
          while (timeline.length <= slot) timeline.push(0)
          timeline[slot] = (timeline[slot] as number) + 1
          clients.push(client)
          if ((client.socket as tls.TLSSocket | null)?.isSessionReused()) resumed++
          ok++
          finishOne()
        },
        (err: Error) => {
          failed++
          if (errors.length < 10) errors.push(`${dev.deviceId}: ${err.message}`)
          finishOne()
        },
      )
    }
    // Connections due by now under the ramp (all of them when unlimited), bounded by the in-flight cap.
    const pump = () => {
      const due =
        init.rampPerSec > 0 ? Math.min(n, Math.floor((init.rampPerSec * (performance.now() - t0)) / 1000) + 1) : n
      while (next < due && inflight < init.concurrency) startOne()
    }
    if (init.rampPerSec > 0) {
      const timer = setInterval(() => {
        pump()
        if (next >= n) clearInterval(timer)
      }, 5)
    }
    pump()
  })
  clearInterval(progress)
  const cpu = process.cpuUsage(cpu0)
  send({
    type: 'connected',
    ok,
    failed,
    errors,
    hist: encodeHistogram(h),
    timeline,
    elapsedMs: lastDone,
    cpuMs: (cpu.user + cpu.system) / 1000,
    droppedAfterConnect: dropped,
    resumed,
  })
}

process.on('message', (m: ToConnectWorker) => {
  if (m.type === 'init') {
    initMsg = m
    void run(m)
  } else if (m.type === 'storm') {
    const init = initMsg as ConnectWorkerInit
    closing = true
    void Promise.all(clients.map((c) => c.end())).then(() => {
      clients = []
      closing = false
      dropped = 0
      // the storm: everyone at once, only the in-flight cap in the way
      void run({ ...init, rampPerSec: 0 }, m.resume)
    })
  } else if (m.type === 'close') {
    const droppedWhileIdle = dropped
    closing = true
    void Promise.all(clients.map((c) => c.end())).then(() => {
      send({ type: 'closed', droppedWhileIdle })
      setTimeout(() => process.exit(0), 50)
    })
  }
})

exitWithParent()
