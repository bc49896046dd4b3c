// bench/control-plane.ts — how long a revocation written by another process takes to cut a connected device
// (src/cluster/control-plane.ts: migration 0013's NOTIFY → the broker's LISTEN session → re-check → close).
//
// What it does: a fresh PostgreSQL database and a broker on it (`--brokers` of them, all on that database, each with
// every device connected: without Redis one device may hold a session on each), `--devices` bench devices registered
// and connected over mTLS; then, one at a time, each device is revoked by a separate pg pool — another process's
// write, as the CLI against PULSEGATE_DATABASE_URL does it — and the time from the start of that write to the close
// of the device's session on every broker is recorded. Prints p50/p90/p99/max in ms, then one line of JSON.
// Also prints the control-plane counters of the first broker.
//
// How to run (from the repository root):
//   npm run build
//   node dist/bench/control-plane.js --devices 200 --brokers 2
import { parseArgs } from 'node:util'
import fs from 'node:fs'
import mqtt, { type MqttClient } from 'mqtt'
import { ephemeralConfig } from '../broker.config.js'
import { createLogger } from '../src/log.js'
import { type Pulsegate, startPulsegate } from '../src/broker.js'
import { openPostgres } from '../src/store/postgres.js'
import { Registry } from '../src/store/registry.js'
import { num, printHeaderAndExit } from './lib/args.js'
import { provisionDevices, startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import { latencyHistogram, loadavg, summarizeMs } from './lib/stats.js'

const { values } = parseArgs({
  options: {
    devices: { type: 'string', default: '200' },
    brokers: { type: 'string', default: '2' },
    help: { type: 'boolean' },
  },
})
if (values.help) printHeaderAndExit(import.meta.url)
const count = num('devices', values.devices, 1)
const brokerCount = num('brokers', values.brokers, 1)

const pki = await ensureBenchCerts(count)
const first = await startBenchBroker('postgres', pki)
const tlsOverride = { tls: { caFile: pki.caCert, certFile: pki.serverCert, keyFile: pki.serverKey } }
const brokers: Pulsegate[] = [first.instance]
for (let i = 1; i < brokerCount; i++) {
  const cfg = ephemeralConfig(
    {
      dataDir: first.dataDir,
      databaseUrl: first.instance.config.databaseUrl,
      logLevel: 'warn',
      jwtSecret: 'bench-secret-0123456789abcdef',
    },
    tlsOverride,
  )
  brokers.push(await startPulsegate(cfg, { log: createLogger('warn') }))
}
await provisionDevices(first, pki.devices)
const ca = fs.readFileSync(pki.caCert)
const sessions: MqttClient[][] = []
for (const d of pki.devices) {
  const cert = fs.readFileSync(d.certPath)
  const key = fs.readFileSync(d.keyPath)
  sessions.push(
    await Promise.all(
      brokers.map((b) =>
        mqtt.connectAsync(`mqtts://127.0.0.1:${b.ports.mqtts}`, {
          clientId: d.deviceId,
          cert,
          key,
          ca,
          servername: 'localhost',
          reconnectPeriod: 0,
          protocolVersion: 4,
        }),
      ),
    ),
  )
}

// The other process: its own pool, as the CLI would open.
const writer = openPostgres(first.instance.config.databaseUrl as string, 1, createLogger('warn'))
const registry = new Registry(writer)
const hist = latencyHistogram()
let timedOut = 0
for (const [i, d] of pki.devices.entries()) {
  const clients = sessions[i] as MqttClient[]
  const closes = clients.map(
    (c) =>
      new Promise<number>((resolve) => {
        const t = setTimeout(() => resolve(Number.NaN), 10_000)
        c.once('close', () => {
          clearTimeout(t)
          resolve(performance.now())
        })
      }),
  )
  // From the start of the write: revokeDevice commits two statements, and the first one's notification already cuts.
  const committed = performance.now()
  await registry.revokeDevice(d.deviceId)
  for (const at of await Promise.all(closes)) {
    if (Number.isNaN(at)) timedOut++
    else hist.recordValue(Math.max(1, Math.round((at - committed) * 1000)))
  }
}
const summary = summarizeMs(hist)
console.log(
  `revocation written by another process → session closed, ${count} devices × ${brokerCount} brokers (load ${loadavg()}):`,
)
console.log(
  `  p50 ${summary.p50} ms  p90 ${summary.p90} ms  p99 ${summary.p99} ms  max ${summary.max} ms  not cut in 10 s: ${timedOut}`,
)
const counters = await first.instance.metrics.registry.getMetricsAsJSON()
for (const m of counters.filter((x) => x.name.startsWith('pulsegate_control_')))
  console.log(`  ${m.name} ${JSON.stringify(m.values.map((v) => [v.labels, v.value]))}`)
console.log(JSON.stringify({ devices: count, brokers: brokerCount, timedOut, ...summary }))
await writer.close()
for (const c of sessions.flat()) c.end(true)
for (const b of brokers.slice(1)) await b.stop()
await first.stop()
