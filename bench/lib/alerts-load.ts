// Background load for bench/alerts.ts, in its own thread: N tracker connections (mTLS) each publishing a QoS 1 batch
// of 6 ordinary samples every second (HR in a normal running band, steps), so alerts are measured under traffic.
import fs from 'node:fs'
import { parentPort, workerData } from 'node:worker_threads'
import mqtt, { type MqttClient } from 'mqtt'

interface LoadInit {
  url: string
  ca: string
  devices: { deviceId: string; certPath: string; keyPath: string }[]
  seconds: number
}

const init = workerData as LoadInit
const ca = fs.readFileSync(init.ca)
const clients: MqttClient[] = []
let acked = 0
let failed = 0

for (let i = 0; i < init.devices.length; i++) {
  const d = init.devices[i] as LoadInit['devices'][number]
  const c = mqtt.connect(init.url, {
    clientId: d.deviceId,
    cert: fs.readFileSync(d.certPath),
    key: fs.readFileSync(d.keyPath),
    ca,
    servername: 'localhost',
    reconnectPeriod: 0,
    protocolVersion: 4,
    reschedulePings: false,
  })
  c.on('error', () => failed++)
  clients.push(c)
  if (i % 50 === 49) await new Promise((r) => setTimeout(r, 50))
}
await Promise.all(clients.map((c) => (c.connected ? null : new Promise((r) => c.once('connect', r)))))
parentPort?.postMessage({ type: 'connected', n: clients.length })

let seq = 0
const started = Date.now()
const timer = setInterval(() => {
  seq++
  const now = Date.now()
  clients.forEach((c, i) => {
    // Spread each second's publishes over the second, like independent devices.
    setTimeout(
      () => {
        const samples = Array.from({ length: 5 }, (_, k) => ({ t: now - 800 + k * 200, hr: 130 + ((i + k) % 20) }))
        c.publish(
          `devices/${init.devices[i]?.deviceId}/readings`,
          JSON.stringify({ seq, samples: [...samples, { t: now, steps: 3 }] }),
          { qos: 1 },
          (err) => (err ? failed++ : acked++),
        )
      },
      (i * 1000) / clients.length,
    )
  })
  if (Date.now() - started > init.seconds * 1000) {
    clearInterval(timer)
    setTimeout(() => {
      for (const c of clients) c.end(true)
      parentPort?.postMessage({ type: 'done', acked, failed })
    }, 1500)
  }
}, 1000)
