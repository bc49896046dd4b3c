// bench/ingest.ts — durable ingest throughput and ack latency of pulsegate, verified against the database.
//
// What it measures: pulsegate runs in this process (its event loop is this process's main thread) on a fresh store —
// a new PostgreSQL database (CREATE DATABASE per run, dropped afterwards) or the embedded TimescaleDB in a temp dir.
// `--connections` devices with their own ECDSA P-256 certificates (cached, see bench/lib/certs.ts) connect over mTLS
// from `--workers` forked load-generator processes, ramped at `--ramp` connections/s; then each publishes QoS 1
// readings batches of `--batch` heart-rate samples (`--format` cbor|json, timestamps unique per device) with at most
// `--inflight` unacknowledged, as fast as PUBACKs come back (`--rate 0`, saturation) or at `--rate` messages/s in total.
// After `--warmup` s, a window of `--duration` s is measured:
//   - ack latency publish → PUBACK (HDR histogram, merged over workers): p50/p90/p99/p99.9/max
//   - durable readings/s (samples acknowledged in the window / window time) and messages/s
//   - broker process CPU (process.cpuUsage, % of one core) and event-loop utilisation, RSS (peak and at the end),
//     the load generators' CPU, PostgreSQL backends' CPU (from /proc), machine-wide CPU
//   - the ingest pipeline's own histograms from the metrics registry: rows per flush, statement time, commit time
// Then publishing stops, in-flight batches are drained, and the database is checked: `lost` = acknowledged samples
// whose (device, time) is not in `samples` (exact: every acked batch maps to a known time range per device);
// `duplicates` = rows − distinct (device_key, metric, time). Both must be 0.
//
// How to run (from the repository root; raise the fd limit first for many connections):
//   npm run build
//   ulimit -n 20000
//   node dist/bench/ingest.js --store postgres --connections 1000 --batch 10 --rate 0 --duration 20
//   node dist/bench/ingest.js --store postgres --connections 1000 --batch 6 --rate 10000
//   node dist/bench/ingest.js --store embedded --rate 0
//   node dist/bench/ingest.js --store postgres --connections 1000 --batch 5 --rate 1000 --flood 5000   # flood test
// Broker knobs: --flush-ms, --max-batch-rows, --writers, --pool, --embedded-thread worker|main (ingest.flushIntervalMs,
// ingest.maxBatchRows, ingest.writers, databasePoolSize, embeddedThread). `--cpu-profile /tmp/window.cpuprofile` samples the broker's main thread over the
// measured window only (open it in Chrome DevTools); `--heap-snapshot f.heapsnapshot` writes one at the window's end; `node --cpu-prof` profiles the whole run (the workers are forked
// without it); `--generator-cpu-prof <dir>` profiles the load generators; `--generator-nice 10` runs them at a lower
// priority (Linux), so on a machine they share with the broker a latency tail is the broker's, not a fight for cores. Prints a human summary, then one line of
// JSON with every figure (incl. a hash of dist/src: the figures belong to one version of the broker).
import { once } from 'node:events'
import fs from 'node:fs'
import { monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import v8 from 'node:v8'
import type { BrokerConfig, DeepPartial } from '../broker.config.js'
import { type BenchBroker, provisionDevices, type StoreKind, startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import type { DeviceResult, FromWorker, ToWorker } from './lib/ingest-worker.js'
import {
  brokerBuildHash,
  counterDelta,
  counterSeries,
  cpuDelta,
  cpuOf,
  histogramDelta,
  loadavg,
  machineCores,
  machineCpu,
  mb,
  mergeHistograms,
  postgresPids,
  round,
  type MetricSnapshot,
  sleep,
  snapshotMetrics,
  summarizeMs,
} from './lib/stats.js'
import { num, oneOf, printHeaderAndExit } from './lib/args.js'
import { startCpuProfile } from './lib/cpu-profile.js'
import { runSummary, type WindowReport, WorkerHandle } from './lib/worker-protocol.js'

const { values: a } = parseArgs({
  options: {
    store: { type: 'string', default: 'postgres' },
    connections: { type: 'string', default: '1000' },
    batch: { type: 'string', default: '10' },
    rate: { type: 'string', default: '0' },
    duration: { type: 'string', default: '20' },
    warmup: { type: 'string', default: '3' },
    inflight: { type: 'string', default: '10' },
    format: { type: 'string', default: 'cbor' },
    workers: { type: 'string', default: '1' },
    ramp: { type: 'string', default: '1000' },
    'flush-ms': { type: 'string' },
    'max-batch-rows': { type: 'string' },
    writers: { type: 'string' },
    pool: { type: 'string' },
    'max-queued-rows': { type: 'string' },
    // embedded store: PGlite on its own thread (default) or on the broker's (item 5 of #16: with vs without)
    'embedded-thread': { type: 'string' },
    // flood test (#16): after the measured window, a second one of the same length with one more device publishing
    // QoS 1 at this many messages/s (e.g. 100 × the device rate limit) beside the others: their ack latency in both
    // windows, one run
    flood: { type: 'string', default: '0' },
    'log-level': { type: 'string', default: 'warn' },
    label: { type: 'string', default: '' },
    'cpu-profile': { type: 'string' },
    'heap-snapshot': { type: 'string' },
    'generator-cpu-prof': { type: 'string' },
    // the load-generator processes' nice value (Linux; 0: as the broker): they share the broker's two cores here
    'generator-nice': { type: 'string', default: '0' },
    help: { type: 'boolean', default: false },
  },
})

if (a.help) printHeaderAndExit(import.meta.url)

const store: StoreKind = oneOf('store', a.store, ['postgres', 'embedded'])
const format = oneOf('format', a.format, ['cbor', 'json'])
const opts = {
  store,
  connections: num('connections', a.connections, 1),
  batch: num('batch', a.batch, 1),
  rate: num('rate', a.rate, 0),
  durationS: num('duration', a.duration, 1),
  warmupS: num('warmup', a.warmup, 0),
  inflight: num('inflight', a.inflight, 1),
  format,
  workers: num('workers', a.workers, 1),
  ramp: num('ramp', a.ramp, 1),
  flood: num('flood', a.flood, 0),
  generatorNice: num('generator-nice', a['generator-nice'], 0),
}
const overrides: DeepPartial<BrokerConfig> = { ingest: {} }
if (a['flush-ms'] !== undefined) overrides.ingest!.flushIntervalMs = num('flush-ms', a['flush-ms'], 0)
if (a['max-batch-rows'] !== undefined) overrides.ingest!.maxBatchRows = num('max-batch-rows', a['max-batch-rows'], 1)
if (a.writers !== undefined) overrides.ingest!.writers = num('writers', a.writers, 1)
if (a['max-queued-rows'] !== undefined)
  overrides.ingest!.maxQueuedRows = num('max-queued-rows', a['max-queued-rows'], 100)
if (a.pool !== undefined) overrides.databasePoolSize = num('pool', a.pool, 1)
if (a['embedded-thread'] !== undefined)
  overrides.embeddedThread = oneOf('embedded-thread', a['embedded-thread'], ['worker', 'main']) as 'worker' | 'main'

const log = (s: string) => process.stderr.write(`[ingest-bench] ${s}\n`)

type IngestWorker = WorkerHandle<ToWorker, FromWorker>

function startWorker(index: number): IngestWorker {
  const prof = a['generator-cpu-prof']
  const w = new WorkerHandle<ToWorker, FromWorker>(
    new URL('./lib/ingest-worker.js', import.meta.url),
    prof ? ['--cpu-prof', `--cpu-prof-dir=${prof}`] : [],
    undefined,
    opts.generatorNice,
  )
  w.child.on('exit', (code) => {
    if (code !== 0 && code !== null) log(`worker ${index} exited with ${code}`)
  })
  return w
}

async function main() {
  const started = Date.now()
  log(`load average ${loadavg()}; options ${JSON.stringify(opts)} overrides ${JSON.stringify(overrides)}`)
  const pki = await ensureBenchCerts(opts.connections + (opts.flood > 0 ? 1 : 0), {
    onProgress: (d, t) => log(`issued ${d}/${t} certificates`),
  })
  if (pki.issued > 0) log(`issued ${pki.issued} device certificates in ${round(pki.issueMs / 1000)} s (cached now)`)
  const broker: BenchBroker = await startBenchBroker(store, pki, overrides, a['log-level'] as BrokerConfig['logLevel'])
  let workers: IngestWorker[] = []
  const onSignal = () => {
    log('interrupted: stopping the broker and dropping the database')
    for (const w of workers) w.child.kill()
    void broker.stop().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    await run(broker, pki.devices, (w) => {
      workers = w
    })
  } finally {
    // the workers exit by themselves after 'exit' (writing their profiles, if any); stragglers are killed
    await Promise.race([
      Promise.all(workers.map((w) => (w.child.exitCode === null ? once(w.child, 'exit') : null))),
      sleep(3000),
    ])
    for (const w of workers) if (w.child.exitCode === null) w.child.kill()
    await broker.stop()
    log(`done in ${round((Date.now() - started) / 1000)} s`)
  }
}

async function run(
  broker: BenchBroker,
  allDevices: Awaited<ReturnType<typeof ensureBenchCerts>>['devices'],
  setWorkers: (w: IngestWorker[]) => void,
) {
  const inst = broker.instance
  let devices = allDevices
  await provisionDevices(broker, devices)
  log(
    `${store}: ${devices.length} devices registered in ${round(broker.provisionMs)} ms; mqtts port ${inst.ports.mqtts}`,
  )
  global.gc?.()
  const rssBefore = process.memoryUsage().rss

  const tBase = Date.now() - 3600_000
  const nW = opts.workers
  const floodDevice = opts.flood > 0 ? devices[opts.connections] : undefined
  devices = devices.slice(0, opts.connections)
  const workers = Array.from({ length: nW }, (_, i) => startWorker(i))
  setWorkers(workers)
  const connected = workers.map((w) => w.next('connected'))
  workers.forEach((w, i) => {
    w.send({
      type: 'init',
      host: '127.0.0.1',
      port: inst.ports.mqtts as number,
      caPath: broker.instance.config.tls.caFile as string,
      devices: devices
        .filter((_, k) => k % nW === i)
        .map((d) => ({ deviceId: d.deviceId, certPath: d.certPath, keyPath: d.keyPath })),
      batch: opts.batch,
      inflight: opts.inflight,
      format: opts.format,
      rate: opts.rate / nW,
      rampPerSec: opts.ramp / nW,
      tBase,
      keepaliveS: 60,
    })
  })
  const conn = await Promise.all(connected)
  const okConns = conn.reduce((s, c) => s + c.ok, 0)
  const failedConns = conn.reduce((s, c) => s + c.failed, 0)
  const connectLat = summarizeMs(mergeHistograms(conn.map((c) => c.hist)))
  const rampS = Math.max(...conn.map((c) => c.elapsedMs)) / 1000
  const rssConnected = process.memoryUsage().rss
  log(
    `connected ${okConns}/${devices.length} in ${round(rampS, 2)} s (failed ${failedConns}${
      failedConns
        ? `: ${conn
            .flatMap((c) => c.errors)
            .slice(0, 3)
            .join('; ')}`
        : ''
    }); connect p50 ${connectLat.p50} ms p99 ${connectLat.p99} ms`,
  )
  if (okConns === 0) throw new Error('no connection succeeded')

  // ---- load: warm-up, then the measured window
  for (const w of workers) w.send({ type: 'start' })
  await sleep(opts.warmupS * 1000)

  const pgAll = store === 'postgres' ? postgresPids() : []
  // Backends serving this run's database, by their process title ("postgres: user db host(port) state"): no query,
  // so nothing here waits on the broker's saturated event loop or its pool.
  const backendPids = pgAll.filter((pid) => {
    try {
      return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(` ${broker.dbName} `)
    } catch {
      return false
    }
  })
  const windows = workers.map((w) => w.next('window'))
  const m0: MetricSnapshot = await snapshotMetrics(inst.metrics.registry)
  const pgAll0 = cpuOf(pgAll)
  const pgOurs0 = cpuOf(backendPids)
  const mc0 = machineCpu()
  const elu0 = performance.eventLoopUtilization()
  const cpu0 = process.cpuUsage()
  const lag = monitorEventLoopDelay({ resolution: 10 })
  lag.enable()
  // GC pauses on the broker's thread during the window (scavenges and mark-compacts)
  const gc = { ms: 0, count: 0, majorMs: 0, maxMs: 0 }
  const gcObserver = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      gc.ms += e.duration
      gc.count++
      gc.maxMs = Math.max(gc.maxMs, e.duration)
      // detail.kind: 1 = minor (scavenge), 2 = major (mark-sweep-compact), 4 = incremental, 8 = weak callbacks
      if ((e as unknown as { detail?: { kind?: number } }).detail?.kind === 2) gc.majorMs += e.duration
    }
  })
  gcObserver.observe({ entryTypes: ['gc'] })
  // --cpu-profile: the broker's main thread, sampled over the measured window only (not setup, ramp or verification)
  const stopProfile = a['cpu-profile'] ? await startCpuProfile(a['cpu-profile'] as string) : null
  const t0 = performance.now()
  for (const w of workers) w.send({ type: 'measure', on: true })
  let rssPeak = 0
  // What the RSS is made of at its peak: V8 heap vs Buffers (socket chunks, payloads) — they call for different fixes.
  let memAtPeak = process.memoryUsage()
  const rssTimer = setInterval(() => {
    const m = process.memoryUsage()
    if (m.rss > rssPeak) {
      rssPeak = m.rss
      memAtPeak = m
    }
  }, 500)
  await sleep(opts.durationS * 1000)
  for (const w of workers) w.send({ type: 'measure', on: false })
  const brokerWindowS = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const elu = performance.eventLoopUtilization(elu0)
  lag.disable()
  gcObserver.disconnect()
  clearInterval(rssTimer)
  const rssEnd = process.memoryUsage().rss
  if (a['heap-snapshot']) {
    // At the end of the window, before publishing stops: what the broker holds under this load (Chrome DevTools).
    log(`heap snapshot written to ${v8.writeHeapSnapshot(a['heap-snapshot'] as string)}`)
  }
  if (stopProfile) {
    await stopProfile()
    log(`CPU profile of the window written to ${a['cpu-profile']}`)
  }
  rssPeak = Math.max(rssPeak, rssEnd)
  const mc1 = machineCpu()
  const pgAll1 = cpuOf(pgAll)
  const pgOurs1 = cpuOf(backendPids)
  const m1 = await snapshotMetrics(inst.metrics.registry)
  const win: WindowReport[] = await Promise.all(windows)
  const loadEnd = loadavg()
  const flooded = floodDevice ? await floodWindow(broker, workers, floodDevice, tBase, setWorkers) : null

  // ---- stop, drain, verify
  const all = flooded ? [...workers, flooded.worker] : workers
  const finals = all.map((w) => w.next('final'))
  for (const w of all) w.send({ type: 'stop', drainTimeoutMs: 30_000 })
  const fin = await Promise.all(finals)
  const verification = await verify(
    broker,
    fin.flatMap((f) => f.devices),
    tBase,
  )
  for (const w of all) w.send({ type: 'exit' })

  // ---- figures
  const lat = summarizeMs(mergeHistograms(win.map((w) => w.hist)))
  const readingsPerS = win.reduce((s, w) => s + w.ackedSamples / (w.elapsedMs / 1000), 0)
  const msgsPerS = win.reduce((s, w) => s + w.ackedMsgs / (w.elapsedMs / 1000), 0)
  const sentPerS = win.reduce((s, w) => s + w.sentMsgs / (w.elapsedMs / 1000), 0)
  const missed = win.reduce((s, w) => s + w.missed, 0)
  const brokerCpuPct = ((cpu.user + cpu.system) / 1e6 / brokerWindowS) * 100
  const workersCpuPct = win.reduce((s, w) => s + w.cpuMs / w.elapsedMs, 0) * 100
  const stmt = histogramDelta(m0, m1, 'pulsegate_ingest_statement_seconds')
  const flushRows = histogramDelta(m0, m1, 'pulsegate_ingest_flush_rows')
  const commit = histogramDelta(m0, m1, 'pulsegate_ingest_commit_seconds')
  const rows = counterDelta(m0, m1, 'pulsegate_ingest_rows_committed_total')
  const figures = {
    bench: 'ingest',
    label: a.label,
    loadavg: loadEnd,
    node: process.version,
    brokerBuild: brokerBuildHash(),
    options: opts,
    overrides,
    effectiveIngest: inst.config.ingest,
    databasePoolSize: inst.config.databasePoolSize,
    connections: { ok: okConns, failed: failedConns, rampS: round(rampS, 2), connectMs: connectLat },
    window: { seconds: round(brokerWindowS, 2), warmupS: opts.warmupS },
    throughput: {
      readingsPerS: Math.round(readingsPerS),
      messagesPerS: Math.round(msgsPerS),
      sentMessagesPerS: Math.round(sentPerS),
      targetMessagesPerS: opts.rate,
      missedBySchedule: missed,
    },
    ackLatencyMs: lat,
    /** CPU time per acknowledged message / reading: robust to a shared machine, unlike latency and throughput */
    cpuCost: {
      brokerUsPerMessage: msgsPerS > 0 ? round((brokerCpuPct * 1e4) / msgsPerS, 1) : null,
      brokerUsPerReading: readingsPerS > 0 ? round((brokerCpuPct * 1e4) / readingsPerS, 2) : null,
      postgresUsPerReading:
        store === 'postgres' && readingsPerS > 0
          ? round((cpuDelta(pgOurs0, pgOurs1) / brokerWindowS / readingsPerS) * 1e6, 2)
          : null,
      generatorsUsPerMessage: msgsPerS > 0 ? round((workersCpuPct * 1e4) / msgsPerS, 1) : null,
    },
    broker: {
      cpuPctOfOneCore: round(brokerCpuPct),
      userPct: round((cpu.user / 1e6 / brokerWindowS) * 100),
      systemPct: round((cpu.system / 1e6 / brokerWindowS) * 100),
      eventLoopUtilization: round(elu.utilization, 3),
      gc: {
        pausePct: round((gc.ms / 1000 / brokerWindowS) * 100),
        majorPausePct: round((gc.majorMs / 1000 / brokerWindowS) * 100),
        pauses: gc.count,
        maxPauseMs: round(gc.maxMs),
      },
      eventLoopDelayMs: {
        p50: round(lag.percentile(50) / 1e6, 2),
        p99: round(lag.percentile(99) / 1e6, 2),
        max: round(lag.max / 1e6, 2),
      },
      rssMB: { beforeConnect: mb(rssBefore), connected: mb(rssConnected), peak: mb(rssPeak), end: mb(rssEnd) },
      atPeakMB: {
        heapUsed: mb(memAtPeak.heapUsed),
        heapTotal: mb(memAtPeak.heapTotal),
        arrayBuffers: mb(memAtPeak.arrayBuffers),
      },
    },
    generators: { workers: nW, cpuPctOfOneCore: round(workersCpuPct) },
    postgres:
      store === 'postgres'
        ? {
            backendsCpuPct: round((cpuDelta(pgOurs0, pgOurs1) / brokerWindowS) * 100),
            allPostgresProcessesCpuPct: round((cpuDelta(pgAll0, pgAll1) / brokerWindowS) * 100),
            backends: backendPids.length,
          }
        : null,
    machineCoresBusy: round(machineCores(mc0, mc1), 2),
    /** machine CPU not used by the broker, the generators or PostgreSQL: other work on the machine, in cores */
    otherCoresBusy: round(
      machineCores(mc0, mc1) -
        ((cpu.user + cpu.system) / 1e6 + win.reduce((s, w) => s + w.cpuMs / 1000, 0) + cpuDelta(pgAll0, pgAll1)) /
          brokerWindowS,
      2,
    ),
    pipeline: {
      rowsCommittedPerS: Math.round(rows / brokerWindowS),
      statementsPerS: stmt ? round(stmt.count / brokerWindowS) : null,
      statementMs: stmt
        ? { mean: round(stmt.mean * 1000, 2), p50le: stmt.p50le * 1000, p99le: stmt.p99le * 1000 }
        : null,
      /** statements per latency bucket (upper bound in seconds): a rare stall hides in p99 but not here */
      statementBuckets: stmt?.buckets ?? null,
      commitBuckets: commit?.buckets ?? null,
      rowsPerFlush: flushRows
        ? { mean: Math.round(flushRows.mean), p50le: flushRows.p50le, p99le: flushRows.p99le }
        : null,
      commitMs: commit
        ? { mean: round(commit.mean * 1000, 2), p50le: commit.p50le * 1000, p99le: commit.p99le * 1000 }
        : null,
      statementBusyShare: stmt ? round((stmt.count * stmt.mean) / brokerWindowS, 2) : null,
      refused: counterSeries(m0, m1, 'pulsegate_ingest_refused_total'),
      rejected: counterSeries(m0, m1, 'pulsegate_ingest_samples_rejected_total'),
      writeErrors: counterDelta(m0, m1, 'pulsegate_ingest_write_errors_total'),
    },
    run: runSummary(fin),
    verification,
    flood: flooded
      ? {
          ...flooded.figures,
          /** the other devices' ack p99 with the flood ÷ without it, in this run */
          p99Ratio: lat.p99 > 0 ? round(flooded.figures.othersAckLatencyMs.p99 / lat.p99, 2) : null,
        }
      : null,
  }
  const f = figures
  const o = f.options
  const lines = [
    '',
    `== pulsegate ingest: ${o.store}, ${f.connections.ok} mTLS connections, batch ${o.batch}, ${o.format}, inflight ${o.inflight}, ${o.rate === 0 ? 'saturation' : `target ${o.rate} msg/s`}, ${o.workers} worker(s)${o.generatorNice > 0 ? ` at nice ${o.generatorNice}` : ''}${f.label ? ` [${f.label}]` : ''}`,
    `   broker build ${f.brokerBuild}; load average ${f.loadavg} (at the end of the window); machine busy ${f.machineCoresBusy} of 2 cores, of which other work ${f.otherCoresBusy}`,
    `   durable readings/s ${f.throughput.readingsPerS}   messages/s ${f.throughput.messagesPerS}${o.rate ? `   (sent ${f.throughput.sentMessagesPerS}/s, missed by schedule ${f.throughput.missedBySchedule})` : ''}`,
    `   ack latency ms  p50 ${f.ackLatencyMs.p50}  p90 ${f.ackLatencyMs.p90}  p99 ${f.ackLatencyMs.p99}  p99.9 ${f.ackLatencyMs.p999}  max ${f.ackLatencyMs.max}  (n=${f.ackLatencyMs.count})`,
    `   broker CPU ${f.broker.cpuPctOfOneCore}% of a core (ELU ${f.broker.eventLoopUtilization}, loop delay p99 ${f.broker.eventLoopDelayMs.p99} ms, GC pauses ${f.broker.gc.pausePct}% of the time, longest ${f.broker.gc.maxPauseMs} ms), RSS peak ${f.broker.rssMB.peak} MB (before connect ${f.broker.rssMB.beforeConnect} MB; at the peak: heap used ${f.broker.atPeakMB.heapUsed} of ${f.broker.atPeakMB.heapTotal} MB, Buffers ${f.broker.atPeakMB.arrayBuffers} MB)`,
    `   CPU per message: broker ${f.cpuCost.brokerUsPerMessage} µs (${f.cpuCost.brokerUsPerReading} µs/reading)${f.cpuCost.postgresUsPerReading !== null ? `, postgres ${f.cpuCost.postgresUsPerReading} µs/reading` : ''}, generators ${f.cpuCost.generatorsUsPerMessage} µs`,
    `   generators CPU ${f.generators.cpuPctOfOneCore}%${f.postgres ? `   postgres backends CPU ${f.postgres.backendsCpuPct}% (all postgres ${f.postgres.allPostgresProcessesCpuPct}%)` : ''}`,
    `   group commit: ${f.pipeline.statementsPerS} stmt/s, ${f.pipeline.rowsPerFlush?.mean} rows/flush, statement mean ${f.pipeline.statementMs?.mean} ms, commit (enqueue→commit) mean ${f.pipeline.commitMs?.mean} ms p99≤${f.pipeline.commitMs?.p99le} ms, writer busy ${f.pipeline.statementBusyShare}`,
    `   connect: ${f.connections.ok} ok / ${f.connections.failed} failed in ${f.connections.rampS} s, p50 ${f.connections.connectMs.p50} ms p99 ${f.connections.connectMs.p99} ms`,
    ...(f.flood
      ? [
          `   flood: 1 device at ${o.flood} msg/s (QoS 1) beside them for ${o.durationS} s: their ack p99 ${f.flood.othersAckLatencyMs.p99} ms (p50 ${f.flood.othersAckLatencyMs.p50}) vs ${f.ackLatencyMs.p99} ms without = ×${f.flood.p99Ratio}; the flooder got ${f.flood.flooderAckedPerS} acks/s, ${f.flood.throttled} publishes held back, ${f.flood.disconnects} disconnects`,
        ]
      : []),
    `   verification: acked samples ${f.verification.ackedSamples}, rows ${f.verification.rowsInDb}, lost ${f.verification.lost}, duplicates ${f.verification.duplicates} (committed but unacked ${f.verification.committedNotAcked}; closed connections ${f.run.closedDuringRun})`,
    '',
  ]
  console.log(lines.join('\n'))
  console.log(JSON.stringify(figures))
}

/** The second window of --flood: the same devices, plus one publishing at opts.flood msg/s from its own process. */
async function floodWindow(
  broker: BenchBroker,
  workers: IngestWorker[],
  device: { deviceId: string; certPath: string; keyPath: string },
  tBase: number,
  setWorkers: (w: IngestWorker[]) => void,
) {
  const inst = broker.instance
  const fw = startWorker(workers.length)
  setWorkers([...workers, fw])
  const connected = fw.next('connected')
  fw.send({
    type: 'init',
    host: '127.0.0.1',
    port: inst.ports.mqtts as number,
    caPath: inst.config.tls.caFile as string,
    devices: [{ deviceId: device.deviceId, certPath: device.certPath, keyPath: device.keyPath }],
    batch: opts.batch,
    inflight: 100,
    format: opts.format,
    rate: opts.flood,
    rampPerSec: 10,
    tBase,
    keepaliveS: 60,
  })
  await connected
  fw.send({ type: 'start' })
  await sleep(opts.warmupS * 1000)
  const m0 = await snapshotMetrics(inst.metrics.registry)
  const others = workers.map((w) => w.next('window'))
  const mine = fw.next('window')
  for (const w of [...workers, fw]) w.send({ type: 'measure', on: true })
  await sleep(opts.durationS * 1000)
  for (const w of [...workers, fw]) w.send({ type: 'measure', on: false })
  const win = await Promise.all(others)
  const fwin = await mine
  const m1 = await snapshotMetrics(inst.metrics.registry)
  log(`flood window done: the flooder sent ${fwin.sentMsgs}, acked ${fwin.ackedMsgs}`)
  return {
    worker: fw,
    figures: {
      othersAckLatencyMs: summarizeMs(mergeHistograms(win.map((w) => w.hist))),
      othersMessagesPerS: Math.round(win.reduce((s, w) => s + w.ackedMsgs / (w.elapsedMs / 1000), 0)),
      flooderSentPerS: Math.round(fwin.sentMsgs / (fwin.elapsedMs / 1000)),
      flooderAckedPerS: Math.round(fwin.ackedMsgs / (fwin.elapsedMs / 1000)),
      throttled: counterDelta(m0, m1, 'pulsegate_limit_throttled_total'),
      disconnects: counterDelta(m0, m1, 'pulsegate_limit_disconnects_total'),
    },
  }
}

async function verify(broker: BenchBroker, devices: DeviceResult[], tBase: number) {
  const db = broker.instance.db
  const batch = opts.batch
  const d: number[] = []
  const lo: number[] = []
  const hi: number[] = []
  let ackedSamples = 0
  let sentSamples = 0
  for (const dev of devices) {
    const key = broker.deviceKeys.get(dev.deviceId) as number
    sentSamples += dev.sent * batch
    const unacked = new Set(dev.unacked)
    let runStart = 0
    for (let seq = 1; seq <= dev.sent + 1; seq++) {
      const acked = seq <= dev.sent && !unacked.has(seq)
      if (acked) {
        ackedSamples += batch
        if (runStart === 0) runStart = seq
      } else if (runStart !== 0) {
        d.push(key)
        lo.push(tBase + (runStart - 1) * batch)
        hi.push(tBase + (seq - 1) * batch)
        runStart = 0
      }
    }
  }
  const started = performance.now()
  const found = await db.query<{ n: string }>(
    `SELECT coalesce(sum(c), 0)::bigint AS n
     FROM unnest($1::int4[], $2::float8[], $3::float8[]) AS r(d, lo, hi)
     CROSS JOIN LATERAL (SELECT count(*) AS c FROM samples s
       WHERE s.device_key = r.d AND s.metric = 1
         AND s.time >= to_timestamp(r.lo / 1000.0) AND s.time < to_timestamp(r.hi / 1000.0)) x`,
    [d, lo, hi],
  )
  const totals = await db.query<{ rows: string; distinct: string }>(
    'SELECT count(*)::bigint AS rows, count(DISTINCT (device_key, metric, time))::bigint AS distinct FROM samples',
  )
  const foundAcked = Number(found.rows[0]?.n ?? 0)
  const rows = Number(totals.rows[0]?.rows ?? 0)
  const distinct = Number(totals.rows[0]?.distinct ?? 0)
  return {
    sentSamples,
    ackedSamples,
    rowsInDb: rows,
    ackedFoundInDb: foundAcked,
    lost: ackedSamples - foundAcked,
    duplicates: rows - distinct,
    /** rows committed whose PUBACK never reached the device (allowed: the device would resend, idempotently) */
    committedNotAcked: rows - foundAcked,
    queryMs: Math.round(performance.now() - started),
  }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
