// Alert latency, device publish → app receive, while ~1,000 trackers stream in the background.
// Each probe user has a tracker (mTLS) and an app subscribed over MQTT/WebSocket to users/{uid}/alerts. A probe
// publishes one batch that completes a low-SpO2 episode (SpO2 < 90 % over ≥ 60 s): the alert is evaluated on the
// committed batch, persisted, and published; later one batch resolves it. Both messages are timed.
// Run: npm run build && node dist/bench/alerts.js [--background 1000] [--probes 200] [--store postgres|embedded]
import fs from 'node:fs'
import { parseArgs } from 'node:util'
import type { MqttClient } from 'mqtt'
import type { AlertMessage } from '../src/outputs/payloads.js'
import { provisionDevices, type StoreKind, startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import { latencyHistogram, loadavg, summarizeMs } from './lib/stats.js'
import { startBackgroundLoad } from './lib/background-load.js'
import { connectApp, connectTracker, spo2LowEpisode } from './lib/clients.js'

const { values } = parseArgs({
  options: {
    background: { type: 'string', default: '1000' },
    probes: { type: 'string', default: '200' },
    store: { type: 'string', default: 'postgres' },
  },
})
const BG = Number(values.background)
const PROBES = Number(values.probes)
const pki = await ensureBenchCerts(BG + PROBES, { onProgress: (d, t) => console.error(`issued ${d}/${t} certs`) })
const bb = await startBenchBroker(values.store as StoreKind, pki)
const pg = bb.instance
await provisionDevices(bb, pki.devices)
const bgDevices = pki.devices.slice(0, BG)
const probes = pki.devices.slice(BG, BG + PROBES)
const mqttsUrl = `mqtts://127.0.0.1:${pg.ports.mqtts}`

const load = startBackgroundLoad({ url: mqttsUrl, ca: pki.caCert, devices: bgDevices, seconds: 10 + PROBES * 0.1 + 20 })
const loadDone = load.done
await load.connected
console.error(`${BG} background trackers connected and streaming`)

const ca = fs.readFileSync(pki.caCert)
const opened = latencyHistogram()
const resolved = latencyHistogram()
let missing = 0
const pending = new Map<string, { sentAt: number; resolve: () => void }>()

const apps: MqttClient[] = []
for (const p of probes) {
  const app = await connectApp(pg, p.userId)
  await app.subscribeAsync(`users/${p.userId}/alerts`, { qos: 1 })
  app.on('message', (_t, buf) => {
    const a = JSON.parse(buf.toString()) as AlertMessage
    const key = `${a.userId}:${a.state}`
    const w = pending.get(key)
    if (!w) return
    const us = (performance.now() - w.sentAt) * 1000
    ;(a.state === 'opened' ? opened : resolved).recordValue(Math.max(1, Math.round(us)))
    pending.delete(key)
    w.resolve()
  })
  apps.push(app)
}

async function probe(dev: (typeof probes)[number], seq: number): Promise<void> {
  const c = await connectTracker(mqttsUrl, dev, ca)
  const timed = async (state: 'opened' | 'resolved', samples: object[]) => {
    const got = new Promise<void>((resolve) =>
      pending.set(`${dev.userId}:${state}`, { sentAt: performance.now(), resolve }),
    )
    pending.get(`${dev.userId}:${state}`)!.sentAt = performance.now()
    c.publish(`devices/${dev.deviceId}/readings`, JSON.stringify({ seq: seq++, samples }), { qos: 1 })
    const timeout = new Promise<void>((r) => setTimeout(r, 5000))
    await Promise.race([got, timeout])
    if (pending.delete(`${dev.userId}:${state}`)) missing++
  }
  const episode = spo2LowEpisode(Date.now())
  await timed('opened', episode.opened)
  await timed('resolved', episode.resolved)
  await c.endAsync()
}

const t0 = performance.now()
const cpu0 = process.cpuUsage()
// Probes run 4 at a time: alert traffic on top of the steady background.
for (let i = 0; i < probes.length; i += 4)
  await Promise.all(probes.slice(i, i + 4).map((p, k) => probe(p, 1000 + i + k)))
const seconds = (performance.now() - t0) / 1000
const cpu = process.cpuUsage(cpu0)
const bg = await loadDone
await Promise.all(apps.map((a) => a.endAsync()))
const result = {
  bench: 'alerts',
  store: values.store,
  backgroundTrackers: BG,
  backgroundAcked: bg.acked,
  backgroundFailed: bg.failed,
  probes: PROBES,
  opened: summarizeMs(opened),
  resolved: summarizeMs(resolved),
  missing,
  brokerProcessCpuPct: Math.round(((cpu.user + cpu.system) / 1e6 / seconds) * 100),
  loadavg: loadavg(),
}
console.log(
  `alert latency (device publish → app receive over WebSocket) with ${BG} trackers streaming: opened p50 ${result.opened.p50} ms, p99 ${result.opened.p99} ms; resolved p50 ${result.resolved.p50} ms, p99 ${result.resolved.p99} ms; missing ${missing}; load ${result.loadavg}`,
)
console.log(JSON.stringify(result))
await load.stop()
await bb.stop()
process.exit(0)
