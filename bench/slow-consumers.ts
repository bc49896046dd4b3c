// bench/slow-consumers.ts — broker memory with apps that stop reading (src/limits/outbound.ts), with the outbound
// guard and without it, in one run.
//
// What it does, once per mode (guarded: the configured limits; unguarded: limits.outbound soft/hard 0): pulsegate in
// this process (embedded store); a child process opens `--apps` MQTT-over-WebSocket apps (one user each, token in the
// password), each subscribed to its users/{uid}/live (QoS 0) and users/{uid}/alerts (QoS 1), then stops reading every
// socket (a frozen phone). For `--duration` s the broker publishes to every user a live snapshot of `--payload` bytes
// `--rate` times a second and an alert every second. The loopback kernel buffers take the first few MB per socket
// (invisible to RSS), so the payload is large enough to get past them within the run.
// Prints per mode: broker RSS and heap growth (after global.gc(), run with --expose-gc), bytes waiting in user space
// for the frozen apps (sum over connections), held-back QoS 0 packets, apps disconnected as slow, and the ratio of
// RSS growth guarded / unguarded. The Aedes drainTimeout (limits.drainTimeoutMs, 20 s by default), which also cuts
// stuck clients, is set out of the way in both modes, so the figures are the guard's alone.
//
//   npm run build && node --expose-gc dist/bench/slow-consumers.js --apps 1000 --duration 40
import { fork } from 'node:child_process'
import type { Duplex } from 'node:stream'
import { parseArgs } from 'node:util'
import type { Client } from 'aedes'
import mqttPacket from 'mqtt-packet'
import WebSocket from 'ws'
import { bytesWaiting } from '../src/limits/outbound.js'
import { num } from './lib/args.js'
import { startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import { loadavg, mb, round, sleep } from './lib/stats.js'

const { values: a } = parseArgs({
  options: {
    apps: { type: 'string', default: '1000' },
    duration: { type: 'string', default: '40' },
    payload: { type: 'string', default: '65536' },
    rate: { type: 'string', default: '4' },
    child: { type: 'string' },
  },
})

// ---- the frozen apps (child process) ----
if (a.child) {
  const port = Number(a.child)
  const sockets: WebSocket[] = []
  let ready = 0
  // the tokens come over IPC (a thousand JWTs exceed what argv may hold)
  const tokens = await new Promise<string[]>((resolve) =>
    process.once('message', (m: { type: string; tokens: string[] }) => resolve(m.tokens)),
  )
  for (let i = 0; i < tokens.length; i++) {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/mqtt`, 'mqtt')
    sockets.push(ws)
    ws.on('open', () => {
      ws.send(
        mqttPacket.generate({
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clean: true,
          clientId: `app:bench-u${i}:frozen`,
          keepalive: 0,
          username: 'jwt',
          password: Buffer.from(tokens[i] as string),
        }),
      )
      ws.send(
        mqttPacket.generate({
          cmd: 'subscribe',
          messageId: 1,
          subscriptions: [
            { topic: `users/bench-u${i}/live`, qos: 0 },
            { topic: `users/bench-u${i}/alerts`, qos: 1 },
          ],
        }),
      )
    })
    let subacked = false
    ws.on('message', (d: Buffer) => {
      // SUBACK (0x90) is the last thing before the freeze
      if (!subacked && d.includes(0x90)) {
        subacked = true
        if (++ready === tokens.length) process.send?.({ type: 'ready' })
      }
    })
    ws.on('error', () => {})
  }
  process.on('message', (m: { type: string }) => {
    if (m.type === 'freeze') {
      for (const ws of sockets) (ws as unknown as { _socket: Duplex })._socket.pause()
      process.send?.({ type: 'frozen' })
    }
  })
} else {
  await main()
}

async function main(): Promise<void> {
  const apps = num('apps', a.apps, 1)
  const durationS = num('duration', a.duration, 1)
  const payload = Buffer.alloc(num('payload', a.payload, 1), 0x78)
  const rate = num('rate', a.rate, 1)
  const pki = await ensureBenchCerts(1)
  const results: Record<string, Record<string, number>> = {}
  for (const mode of ['guarded', 'unguarded'] as const) {
    const broker = await startBenchBroker(
      'embedded',
      pki,
      // drainTimeout out of the way in both modes: the figure is the guard's alone
      mode === 'guarded'
        ? { limits: { drainTimeoutMs: 600_000 } }
        : { limits: { drainTimeoutMs: 600_000, outbound: { softBytes: 0, hardBytes: 0 } } },
    )
    const inst = broker.instance
    const tokens = await Promise.all(
      Array.from({ length: apps }, (_, i) => inst.tokens.sign({ sub: `bench-u${i}`, role: 'app', ttl: 3600 })),
    )
    const child = fork(new URL(import.meta.url), ['--child', String(inst.ports.http)], { stdio: 'inherit' })
    child.send({ type: 'tokens', tokens })
    const next = (type: string) =>
      new Promise<void>((resolve) => child.on('message', (m: { type: string }) => m.type === type && resolve()))
    await next('ready')
    const frozen = next('frozen')
    child.send({ type: 'freeze' })
    await frozen
    global.gc?.()
    const before = process.memoryUsage()
    let peakRss = before.rss
    const t0 = performance.now()
    let tick = 0
    while (performance.now() - t0 < durationS * 1000) {
      for (let i = 0; i < apps; i++) {
        // a distinct buffer per snapshot, as real ones are (a shared one would be queued by reference)
        inst.publish(`users/bench-u${i}/live`, Buffer.from(payload), 0, false)
        if (tick % rate === 0)
          inst.publish(`users/bench-u${i}/alerts`, JSON.stringify({ tick, payload: 'a' }), 1, false)
      }
      tick++
      await sleep(1000 / rate)
      peakRss = Math.max(peakRss, process.memoryUsage().rss)
    }
    const clients = (
      inst.broker as unknown as { clients: Record<string, Client & { conn: Duplex & { socket?: Duplex } }> }
    ).clients
    let waiting = 0
    let connected = 0
    for (const c of Object.values(clients)) {
      waiting += bytesWaiting(c.conn)
      connected++
    }
    global.gc?.()
    const after = process.memoryUsage()
    const metric = async (name: string) =>
      ((await inst.metrics.registry.getSingleMetric(name)?.get())?.values ?? []).reduce((s, v) => s + v.value, 0)
    results[mode] = {
      rssGrowthMB: mb(after.rss - before.rss),
      peakRssGrowthMB: mb(peakRss - before.rss),
      heapGrowthMB: mb(after.heapUsed - before.heapUsed),
      bytesWaitingMB: mb(waiting),
      appsStillConnected: connected,
      heldBack: await metric('pulsegate_outbound_held'),
      droppedQos0: await metric('pulsegate_outbound_dropped_total'),
      cutAsSlow: await metric('pulsegate_outbound_disconnects_total'),
      publishedPerApp: tick,
    }
    child.kill()
    await broker.stop()
  }
  const g = results['guarded'] as Record<string, number>
  const u = results['unguarded'] as Record<string, number>
  console.log(
    [
      '',
      `== slow consumers: ${apps} frozen WebSocket apps, ${payload.length} B snapshots ${rate}/s + 1 alert/s each, ${durationS} s; load ${loadavg()}`,
      ...(['guarded', 'unguarded'] as const).map((m) => {
        const r = results[m] as Record<string, number>
        return `   ${m.padEnd(9)}: RSS +${r.rssGrowthMB} MB after GC (peak +${r.peakRssGrowthMB} MB), heap +${r.heapGrowthMB} MB, ${r.bytesWaitingMB} MB waiting in user space, ${r.appsStillConnected} apps still connected, ${r.cutAsSlow} cut as slow, ${r.droppedQos0} snapshots held back`
      }),
      `   peak RSS growth guarded / unguarded: ${round((g['peakRssGrowthMB'] as number) / Math.max(0.1, u['peakRssGrowthMB'] as number), 3)}`,
      '',
    ].join('\n'),
  )
  console.log(JSON.stringify({ bench: 'slow-consumers', apps, durationS, payload: payload.length, rate, results }))
}
