// Capacity of the public live streams (/live/…, Server-Sent Events): one broker holds `--clients` concurrent SSE
// clients of one public event's board, opened by a child process (bench/lib/sse-worker.ts; the fd limit is per
// process, 20,000 on the development machines), and the board changes `--updates` times, once per
// `--interval-ms` (the stream's coalescing interval, live.minIntervalMs, is 1 s).
// Figures:
//   - RSS per client: (broker RSS with the clients connected − RSS before), / clients, after global.gc() when run with
//     --expose-gc (heap and external likewise);
//   - update latency: the board's server timestamp (`t`, set when it is published, as the output tick does) to its
//     arrival in the client process, over every client and update (p50/p99/max), and how many clients had the last
//     update when it was over;
//   - the broker's CPU and event-loop utilisation during the updates, events sent and dropped-to-latest counts.
// The boards are published through the broker's own publish (the output engine's path: Aedes, its internal
// subscriptions, the SSE hub), with a realistic payload (top 10 of 5,000 runners, ~900 bytes).
// Run:
//   npm run build && ulimit -n 20000
//   node --expose-gc dist/bench/sse.js --clients 10000 --updates 20
// Prints a human summary, then one line of JSON with every figure.
import { fork } from 'node:child_process'
import { parseArgs } from 'node:util'
import { startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import { num, printHeaderAndExit } from './lib/args.js'
import { loadavg, mergeHistograms, summarizeMs } from './lib/stats.js'

const { values: a } = parseArgs({
  options: {
    clients: { type: 'string', default: '10000' },
    updates: { type: 'string', default: '20' },
    'interval-ms': { type: 'string', default: '1000' },
    concurrency: { type: 'string', default: '200' },
    help: { type: 'boolean', default: false },
  },
})
if (a.help) printHeaderAndExit(import.meta.url)
const CLIENTS = num('clients', a.clients, 1)
const UPDATES = num('updates', a.updates, 1)
const INTERVAL = num('interval-ms', a['interval-ms'], 1)
const CONCURRENCY = num('concurrency', a.concurrency, 1)
const EVENT = 'sse-bench'

const log = (msg: string) => console.log(`[sse] ${msg}`)
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const mb = (b: number) => Math.round((b / 1048576) * 10) / 10
const gc = (globalThis as { gc?: () => void }).gc

function memory() {
  gc?.()
  gc?.()
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external }
}

function board(seq: number): string {
  const top = Array.from({ length: 10 }, (_, i) => ({
    rank: i + 1,
    userId: `u${String(i).padStart(10, '0')}abcdef`,
    distanceM: 20_000 - i * 37 + seq,
    paceSPerKm: 290 + i,
    etaS: 6000 + i * 11,
  }))
  return JSON.stringify({ eventId: EVENT, t: Date.now(), seq, runners: 5000, top })
}

type FromWorker =
  | { type: 'connected'; ok: number; failed: number; errors: string[]; ms: number }
  | { type: 'done'; histogram: string; caughtUp: number; open: number; closed: number }

async function main() {
  log(`load average ${loadavg()}; clients ${CLIENTS}, updates ${UPDATES} every ${INTERVAL} ms`)
  if (!gc) log('run with --expose-gc for RSS figures after collection')
  const pki = await ensureBenchCerts(1)
  const broker = await startBenchBroker('postgres', pki, {
    live: { maxClients: CLIENTS + 100 },
    dp: { enabled: false },
    insights: { enabled: false },
  })
  const inst = broker.instance
  const child = fork(new URL('./lib/sse-worker.js', import.meta.url))
  try {
    await inst.registry.createEvent({ eventId: EVENT, isPublic: true })
    inst.publish(`events/${EVENT}/leaderboard`, board(0), 0, true)
    // Warm the path once (route, access look-up, snapshot) so the baseline holds the code, not the clients.
    await fetch(`http://127.0.0.1:${inst.ports.http}/live/events/${EVENT}/leaderboard.json`).then((r) => r.text())
    await sleep(300)
    const before = memory()
    const next = <T extends FromWorker['type']>(type: T) =>
      new Promise<Extract<FromWorker, { type: T }>>((resolve) => {
        const on = (m: FromWorker) => {
          if (m.type !== type) return
          child.off('message', on)
          resolve(m as Extract<FromWorker, { type: T }>)
        }
        child.on('message', on)
      })
    const connected = next('connected')
    child.send({
      type: 'init',
      port: inst.ports.http,
      path: `/live/events/${EVENT}/leaderboard`,
      clients: CLIENTS,
      concurrency: CONCURRENCY,
    })
    const c = await connected
    log(
      `${c.ok} clients connected (${c.failed} failed${c.errors.length ? `: ${c.errors.join('; ')}` : ''}) in ${Math.round(c.ms)} ms`,
    )
    await sleep(500)
    const held = memory()
    const perClient = (k: 'rss' | 'heapUsed' | 'external') => Math.round((held[k] - before[k]) / Math.max(1, c.ok))

    const cpu0 = process.cpuUsage()
    const elu0 = performance.eventLoopUtilization()
    for (let seq = 1; seq <= UPDATES; seq++) {
      inst.publish(`events/${EVENT}/leaderboard`, board(seq), 0, true)
      await sleep(INTERVAL)
    }
    const done = next('done')
    child.send({ type: 'await', seq: UPDATES, timeoutMs: 15_000 })
    const d = await done
    const cpu = process.cpuUsage(cpu0)
    const elu = performance.eventLoopUtilization(elu0)
    const lat = summarizeMs(mergeHistograms([d.histogram]))
    const metrics = await inst.metrics.registry.getMetricsAsJSON()
    const total = (name: string) =>
      (metrics.find((m) => m.name === name)?.values ?? []).reduce((s, v) => s + Number(v.value), 0)
    const result = {
      clients: c.ok,
      failed: c.failed,
      connectMs: Math.round(c.ms),
      rssBeforeMb: mb(before.rss),
      rssHeldMb: mb(held.rss),
      rssPerClientBytes: perClient('rss'),
      heapPerClientBytes: perClient('heapUsed'),
      externalPerClientBytes: perClient('external'),
      updates: UPDATES,
      latencyMs: lat,
      lastUpdateReceivedBy: d.caughtUp,
      openAtEnd: d.open,
      brokerCpuSPerUpdate: Math.round(((cpu.user + cpu.system) / 1e6 / UPDATES) * 1000) / 1000,
      brokerElu: Math.round(elu.utilization * 1000) / 1000,
      eventsSent: total('pulsegate_sse_events_sent_total'),
      droppedToLatest: total('pulsegate_sse_dropped_to_latest_total'),
      loadavg: loadavg(),
    }
    log(
      `RSS ${mb(before.rss)} → ${mb(held.rss)} MB: ${result.rssPerClientBytes} B per client ` +
        `(heap ${result.heapPerClientBytes} B, external ${result.externalPerClientBytes} B)`,
    )
    log(
      `update latency p50 ${lat.p50} ms, p99 ${lat.p99} ms, max ${lat.max} ms over ${lat.count} deliveries; ` +
        `last update received by ${d.caughtUp}/${d.open}`,
    )
    log(
      `broker CPU ${result.brokerCpuSPerUpdate} s per update, ELU ${result.brokerElu}; sent ${result.eventsSent}, dropped-to-latest ${result.droppedToLatest}`,
    )
    console.log(JSON.stringify(result))
  } finally {
    child.kill()
    await broker.stop()
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err)
    process.exit(1)
  },
)
