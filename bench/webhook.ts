// Push latency for offline apps: alert committed → webhook received, while trackers stream in the background.
// A local HTTPS endpoint (the bench PKI's server certificate; the broker trusts the bench CA through webhook.caFile)
// plays the operator's push service and checks every signature. Each probe user has a tracker and no app connected:
// one batch completes a low-SpO2 episode (the alert opens), one resolves it; both changes are pushed. Per push:
//   committed → received: the alert row's commit (alerts.created_at, the broker's database clock on this machine)
//     to the endpoint reading the request;
//   publish → received: the tracker sending the batch to the endpoint reading the request (one clock).
// Run: npm run build && node dist/bench/webhook.js [--alerts 200] [--background 200] [--store postgres|embedded]
import crypto from 'node:crypto'
import fs from 'node:fs'
import https from 'node:https'
import type net from 'node:net'
import { parseArgs } from 'node:util'
import { provisionDevices, type StoreKind, startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import { latencyHistogram, loadavg, summarizeMs } from './lib/stats.js'
import { startBackgroundLoad } from './lib/background-load.js'
import { connectTracker, spo2LowEpisode } from './lib/clients.js'

const { values } = parseArgs({
  options: {
    alerts: { type: 'string', default: '200' },
    background: { type: 'string', default: '200' },
    store: { type: 'string', default: 'postgres' },
  },
})
const PROBES = Number(values.alerts)
const BG = Number(values.background)
const SECRET = crypto.randomBytes(32).toString('hex')

const pki = await ensureBenchCerts(BG + PROBES, { onProgress: (d, t) => console.error(`issued ${d}/${t} certs`) })

// The push service: records when each push arrived; refuses (and counts) a bad signature.
const arrivals = new Map<string, number>() // `${userId}:${state}` → Date.now() at receipt
const arrivalsPerf = new Map<string, number>()
const waiters = new Map<string, () => void>()
let badSignatures = 0
let requests = 0
const endpoint = https.createServer(
  { key: fs.readFileSync(pki.serverKey), cert: fs.readFileSync(pki.serverCert) },
  (req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const at = Date.now()
      const atPerf = performance.now()
      requests++
      const body = Buffer.concat(chunks).toString('utf8')
      const ts = String(req.headers['x-pulsegate-timestamp'])
      const mac = crypto.createHmac('sha256', SECRET).update(`${ts}.${body}`).digest('hex')
      if (req.headers['x-pulsegate-signature'] !== `sha256=${mac}`) {
        badSignatures++
        res.writeHead(401).end()
        return
      }
      const push = JSON.parse(body) as { userId: string; alert?: { state: string } }
      const key = `${push.userId}:${push.alert?.state}`
      if (!arrivals.has(key)) {
        arrivals.set(key, at)
        arrivalsPerf.set(key, atPerf)
      }
      res.writeHead(204).end()
      waiters.get(key)?.()
    })
  },
)
await new Promise<void>((r) => endpoint.listen(0, '127.0.0.1', () => r()))
const endpointPort = (endpoint.address() as net.AddressInfo).port

const bb = await startBenchBroker(values.store as StoreKind, pki, {
  webhook: { url: `https://127.0.0.1:${endpointPort}/push`, secret: SECRET, caFile: pki.caCert },
})
const pg = bb.instance
await provisionDevices(bb, pki.devices)
const bgDevices = pki.devices.slice(0, BG)
const probes = pki.devices.slice(BG, BG + PROBES)
const mqttsUrl = `mqtts://127.0.0.1:${pg.ports.mqtts}`

const load = startBackgroundLoad({ url: mqttsUrl, ca: pki.caCert, devices: bgDevices, seconds: 10 + PROBES * 0.1 + 20 })
const loadDone = load.done
if (BG > 0) await load.connected
console.error(`${BG} background trackers connected and streaming`)

const ca = fs.readFileSync(pki.caCert)
const publishToReceived = latencyHistogram()
let missing = 0

async function probe(dev: (typeof probes)[number], seq: number): Promise<void> {
  const c = await connectTracker(mqttsUrl, dev, ca)
  const timed = async (state: 'opened' | 'resolved', samples: object[]) => {
    const key = `${dev.userId}:${state}`
    const got = new Promise<void>((resolve) => waiters.set(key, resolve))
    const sentAt = performance.now()
    c.publish(`devices/${dev.deviceId}/readings`, JSON.stringify({ seq: seq++, samples }), { qos: 1 })
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<'late'>((r) => {
      timer = setTimeout(() => r('late'), 10_000)
    })
    const outcome = await Promise.race([got.then(() => 'ok' as const), timeout])
    clearTimeout(timer)
    waiters.delete(key)
    if (outcome === 'late') missing++
    else publishToReceived.recordValue(Math.max(1, Math.round(((arrivalsPerf.get(key) ?? 0) - sentAt) * 1000)))
  }
  const episode = spo2LowEpisode(Date.now())
  await timed('opened', episode.opened)
  await timed('resolved', episode.resolved)
  await c.endAsync()
}

const t0 = performance.now()
for (let i = 0; i < probes.length; i += 4)
  await Promise.all(probes.slice(i, i + 4).map((p, k) => probe(p, 1000 + i + k)))
const seconds = (performance.now() - t0) / 1000
const bg = BG > 0 ? await loadDone : { acked: 0, failed: 0 }

// Committed → received, opened alerts: the alert row's commit time against the endpoint's clock (same machine).
const committedToReceived = latencyHistogram()
const rows = await pg.db.query<{ user_id: string; created_ms: string }>(
  `SELECT user_id, (extract(epoch FROM created_at) * 1000)::bigint AS created_ms FROM alerts WHERE kind = 'spo2_low'`,
)
let negative = 0
for (const r of rows.rows) {
  const at = arrivals.get(`${r.user_id}:opened`)
  if (at === undefined) continue
  const ms = at - Number(r.created_ms)
  if (ms < 0) negative++
  committedToReceived.recordValue(Math.max(1, Math.round(ms * 1000)))
}
const text = await pg.metrics.registry.metrics()
const result = {
  bench: 'webhook',
  store: values.store,
  backgroundTrackers: BG,
  backgroundAcked: bg.acked,
  backgroundFailed: bg.failed,
  probes: PROBES,
  pushesReceived: arrivals.size,
  requests,
  badSignatures,
  missing,
  committedToReceived: summarizeMs(committedToReceived),
  publishToReceived: summarizeMs(publishToReceived),
  clockNegative: negative,
  seconds: Math.round(seconds * 10) / 10,
  deadLetters: /pulsegate_webhook_dead_letters\{[^}]*\} (\d+)/.exec(text)?.[1] ?? '0',
  loadavg: loadavg(),
}
console.log(
  `webhook latency, alert committed → push received: p50 ${result.committedToReceived.p50} ms, p99 ${result.committedToReceived.p99} ms (${result.committedToReceived.count} opened alerts); tracker publish → push received: p50 ${result.publishToReceived.p50} ms, p99 ${result.publishToReceived.p99} ms; ${BG} trackers streaming; missing ${missing}; bad signatures ${badSignatures}; load ${result.loadavg}`,
)
console.log(JSON.stringify(result))
await load.stop()
await bb.stop()
endpoint.closeAllConnections()
endpoint.close()
process.exit(0)
