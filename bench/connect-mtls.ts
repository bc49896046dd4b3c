// bench/connect-mtls.ts — mTLS connection capacity of pulsegate: how fast devices can connect, and what an idle
// device connection costs the broker in memory.
//
// What it measures: pulsegate runs in this process (embedded store by default, or `--store postgres` with a fresh
// database) with the bench PKI (bench/lib/certs.ts: one ECDSA P-256 certificate per device, issued once and cached
// under <tmpdir>/bench-certs, since a device's MQTT client id must equal the device id in its certificate).
// `--workers` forked client processes open `--connections` mTLS MQTT connections (TLS handshake with a client
// certificate, CONNECT, CONNACK; the broker checks the certificate, the registry and the fingerprint) at `--ramp`
// new connections per second in total (0 = as fast as possible), at most `--concurrency` handshakes in flight;
// the broker serves at most `--max-handshakes` at once (limits.maxTlsHandshakes, default 32; the rest wait unread).
//   - connections/s: completed CONNACKs / time from the first attempt to the last CONNACK; the best 1-second
//     window (the max sustained rate — meaningful with `--ramp 0`)
//   - connect latency (tls.connect → CONNACK) p50/p90/p99/max, failed connections (and why)
//   - broker CPU during the ramp (ms of CPU per connection) and the clients' CPU
//   - broker RSS per 1,000 idle mTLS connections: (RSS after all are connected and idle for `--idle` s − RSS before
//     connecting) / (connections / 1000), after global.gc() when run with --expose-gc; heap and external likewise
//   - with --storm: a reconnect storm after the ramp — every device disconnects and reconnects at once (bounded by
//     --concurrency and the broker's handshake cap), first with full handshakes, then presenting its TLS session
//     ticket (src/transport/tls-tickets.ts); reconnects/s and broker CPU per connect for both, and their ratio
//
// How to run (from the repository root; the fd limit must exceed the connection count in the broker process):
//   npm run build
//   ulimit -n 20000
//   node --expose-gc dist/bench/connect-mtls.js --connections 5000 --ramp 500
//   node --expose-gc dist/bench/connect-mtls.js --connections 5000 --ramp 0       # max sustained rate
//   node --expose-gc dist/bench/connect-mtls.js --store postgres --connections 19500 --ramp 500 --until-fail
//   node --expose-gc dist/bench/connect-mtls.js --connections 10000 --ramp 1000 --storm --storm-rounds 2
// `--until-fail` searches the ceiling: connections open until `--max-failures` (20) have failed, then the count held
// is the figure (`--connections` is the upper bound; the summary says what stopped it). The broker and the client
// worker are separate processes, so each holds one fd per connection: the fd limit (`ulimit -n`, 20,000 hard on the
// development machines) caps a run at ~19,900 connections; in a 2-core VM both stay CPU-bound at ~300 handshakes/s.
// Progress (connected/failed/in flight) is logged every 5 s during the ramp.
// First run with a new count issues the missing certificates (~12–18 ms each, once). Prints a human summary, then
// one line of JSON with every figure.
import fs from 'node:fs'
import { parseArgs } from 'node:util'
import type { BrokerConfig } from '../broker.config.js'
import { type BenchBroker, provisionDevices, type StoreKind, startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import type { FromConnectWorker, ToConnectWorker } from './lib/connect-worker.js'
import {
  brokerBuildHash,
  cpuDelta,
  cpuOf,
  loadavg,
  machineCores,
  machineCpu,
  mb,
  mergeHistograms,
  postgresPids,
  round,
  sleep,
  summarizeMs,
} from './lib/stats.js'
import { num, oneOf, printHeaderAndExit } from './lib/args.js'
import { WorkerHandle } from './lib/worker-protocol.js'

const { values: a } = parseArgs({
  options: {
    connections: { type: 'string', default: '5000' },
    ramp: { type: 'string', default: '500' },
    workers: { type: 'string', default: '1' },
    concurrency: { type: 'string', default: '256' },
    // the broker's cap on TLS handshakes in progress (limits.maxTlsHandshakes); a large value ≈ no cap
    'max-handshakes': { type: 'string', default: '32' },
    idle: { type: 'string', default: '5' },
    store: { type: 'string', default: 'embedded' },
    keepalive: { type: 'string', default: '60' },
    'until-fail': { type: 'boolean', default: false },
    // reconnect storm: after the ramp, everyone disconnects and reconnects at once, with full handshakes and then
    // resuming their TLS sessions (tickets), --storm-rounds times each
    storm: { type: 'boolean', default: false },
    'storm-rounds': { type: 'string', default: '1' },
    'max-failures': { type: 'string', default: '20' },
    'log-level': { type: 'string', default: 'warn' },
    label: { type: 'string', default: '' },
    help: { type: 'boolean', default: false },
  },
})
if (a.help) printHeaderAndExit(import.meta.url)
const store: StoreKind = oneOf('store', a.store, ['postgres', 'embedded'])
const opts = {
  store,
  connections: num('connections', a.connections, 1),
  ramp: num('ramp', a.ramp, 0),
  workers: num('workers', a.workers, 1),
  concurrency: num('concurrency', a.concurrency, 1),
  maxHandshakes: num('max-handshakes', a['max-handshakes'], 1),
  idleS: num('idle', a.idle, 0),
  keepaliveS: num('keepalive', a.keepalive, 0),
  untilFail: a['until-fail'] === true,
  storm: a.storm === true,
  stormRounds: num('storm-rounds', a['storm-rounds'], 1),
  maxFailures: num('max-failures', a['max-failures'], 1),
}
const log = (s: string) => process.stderr.write(`[connect-bench] ${s}\n`)
const FD_RESERVE = 32

function fdLimit(): number | null {
  try {
    const line = fs
      .readFileSync('/proc/self/limits', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('Max open files'))
    return line ? Number(line.split(/\s+/)[3]) : null
  } catch {
    return null
  }
}

type ConnectWorker = WorkerHandle<ToConnectWorker, FromConnectWorker>

function startWorker(index: number): ConnectWorker {
  // Progress reports are logged as they come; nobody waits for them.
  return new WorkerHandle<ToConnectWorker, FromConnectWorker>(
    new URL('./lib/connect-worker.js', import.meta.url),
    [],
    (m) => {
      if (m.type !== 'progress') return false
      log(
        `worker ${index}: ${m.ok} connected, ${m.failed} failed, ${m.inflight} in flight after ${round(m.elapsedMs / 1000)} s`,
      )
      return true
    },
  )
}

const memory = () => {
  global.gc?.()
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers }
}

async function main() {
  const started = Date.now()
  const limit = fdLimit()
  log(`load average ${loadavg()}; options ${JSON.stringify(opts)}; fd limit ${limit}`)
  if (limit !== null && limit < opts.connections + 200) {
    log(
      `fd limit ${limit} is below ${opts.connections + 200}: raise it (ulimit -n) or connections will fail with EMFILE`,
    )
  }
  const pki = await ensureBenchCerts(opts.connections, { onProgress: (d, t) => log(`issued ${d}/${t} certificates`) })
  if (pki.issued > 0) log(`issued ${pki.issued} device certificates in ${round(pki.issueMs / 1000)} s (cached now)`)
  const broker: BenchBroker = await startBenchBroker(
    store,
    pki,
    { limits: { maxTlsHandshakes: opts.maxHandshakes } },
    a['log-level'] as BrokerConfig['logLevel'],
  )
  let workers: ConnectWorker[] = []
  const onSignal = () => {
    for (const w of workers) w.child.kill()
    void broker.stop().finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  try {
    await provisionDevices(broker, pki.devices)
    log(`${store}: ${pki.devices.length} devices registered in ${round(broker.provisionMs)} ms`)
    const inst = broker.instance
    await sleep(500)
    const before = memory()

    // --until-fail may take this process (the broker's) to its fd limit: a few descriptors held back now and given
    // up when the ramp ends let the measuring that follows (/proc reads, the report) still open files. The ceiling
    // found is lower by as many.
    const reserve = opts.untilFail ? Array.from({ length: FD_RESERVE }, () => fs.openSync('/dev/null', 'r')) : []
    const nW = opts.workers
    workers = Array.from({ length: nW }, (_, i) => startWorker(i))
    await sleep(300) // let the children start before the clock does
    const connected = workers.map((w) => w.next('connected'))
    const cpu0 = process.cpuUsage()
    const elu0 = performance.eventLoopUtilization()
    const mc0 = machineCpu()
    const pgPids = store === 'postgres' ? postgresPids() : []
    const pg0 = cpuOf(pgPids)
    const t0 = performance.now()
    workers.forEach((w, i) => {
      w.send({
        type: 'init',
        host: '127.0.0.1',
        port: inst.ports.mqtts as number,
        caPath: inst.config.tls.caFile as string,
        devices: pki.devices
          .filter((_, k) => k % nW === i)
          .map((d) => ({ deviceId: d.deviceId, certPath: d.certPath, keyPath: d.keyPath })),
        rampPerSec: opts.ramp / nW,
        concurrency: opts.concurrency,
        keepaliveS: opts.keepaliveS,
        timeoutMs: 30_000,
        // each worker stops on its share of the failures
        stopAfterFailures: opts.untilFail ? Math.max(1, Math.ceil(opts.maxFailures / nW)) : 0,
      })
    })
    // A worker that dies (it should not) must end the run with its reason, not leave it waiting for its report.
    const died = workers.map(
      (w, i) =>
        new Promise<never>((_, reject) =>
          w.child.once('exit', (code, signal) =>
            reject(new Error(`client worker ${i} exited (${signal ?? code}) before reporting its connections`)),
          ),
        ),
    )
    const reps = await Promise.race([Promise.all(connected), ...died])
    for (const fd of reserve) fs.closeSync(fd)
    // descriptors of the broker's process at the ramp's end, counting the reserve it held until now (− 1: the listing
    // of /proc/self/fd holds the descriptor of that very listing)
    const brokerFds = fs.readdirSync('/proc/self/fd').length - 1 + reserve.length
    const wallS = (performance.now() - t0) / 1000
    const cpu = process.cpuUsage(cpu0)
    const elu = performance.eventLoopUtilization(elu0)
    const mc1 = machineCpu()
    const pgCpuS = cpuDelta(pg0, cpuOf(pgPids))
    const loadRamp = loadavg()
    const ok = reps.reduce((s, r) => s + r.ok, 0)
    const failed = reps.reduce((s, r) => s + r.failed, 0)
    const rampS = Math.max(...reps.map((r) => r.elapsedMs)) / 1000
    // merged CONNACK timeline (100 ms slots), best 1 s window
    const slots: number[] = []
    for (const r of reps) {
      r.timeline.forEach((c, i) => {
        slots[i] = (slots[i] ?? 0) + c
      })
    }
    let best = 0
    for (let i = 0; i < slots.length; i++) {
      let s = 0
      for (let k = i; k < Math.min(slots.length, i + 10); k++) s += slots[k] ?? 0
      best = Math.max(best, s)
    }
    const lat = summarizeMs(mergeHistograms(reps.map((r) => r.hist)))
    const brokerCpuMs = (cpu.user + cpu.system) / 1000
    const clientCpuMs = reps.reduce((s, r) => s + r.cpuMs, 0)
    log(`connected ${ok}, failed ${failed} in ${round(rampS, 2)} s; idling ${opts.idleS} s`)

    await sleep(opts.idleS * 1000)
    const after = memory()
    const idleConnections = Number(
      (await inst.metrics.registry.getSingleMetric('pulsegate_connections')?.get())?.values.find(
        (v) => v.labels['role'] === 'device',
      )?.value ?? 0,
    )
    const loadIdle = loadavg()
    const per1000 = (x: number, y: number) => (ok > 0 ? mb((y - x) / (ok / 1000)) : null)

    const storms: StormFigures[] = []
    if (opts.storm) {
      for (let round_ = 0; round_ < opts.stormRounds; round_++) {
        for (const resume of [false, true]) {
          storms.push(await storm(workers, inst, resume))
          const s = storms[storms.length - 1] as StormFigures
          log(
            `storm ${s.kind}: ${s.ok} reconnected (${s.failed} failed) in ${s.wallS} s, ${s.connectionsPerS}/s, broker ${s.brokerMsPerConnect} ms CPU each, server handshakes full ${s.serverHandshakes.full} resumed ${s.serverHandshakes.resumed}`,
          )
        }
      }
    }
    const closed = workers.map((w) => w.next('closed'))
    for (const w of workers) w.send({ type: 'close' })
    const cl = await Promise.all(closed)

    const figures = {
      bench: 'connect-mtls',
      label: a.label,
      loadavg: { atRampEnd: loadRamp, atIdleEnd: loadIdle },
      node: process.version,
      brokerBuild: brokerBuildHash(),
      options: opts,
      gcForced: typeof global.gc === 'function',
      connections: { ok, failed, errors: reps.flatMap((r) => r.errors).slice(0, 5), idleOnBroker: idleConnections },
      droppedAfterConnect: cl.reduce((s, c) => s + c.droppedWhileIdle, 0),
      rate: {
        connectionsPerS: round(ok / rampS),
        best1sWindow: best,
        rampS: round(rampS, 2),
        targetPerS: opts.ramp,
      },
      connectLatencyMs: lat,
      cpu: {
        brokerPctOfOneCore: round((brokerCpuMs / 1000 / wallS) * 100),
        brokerMsPerConnection: ok > 0 ? round(brokerCpuMs / ok, 3) : null,
        brokerEventLoopUtilization: round(elu.utilization, 3),
        clientsPctOfOneCore: round((clientCpuMs / 1000 / wallS) * 100),
        clientMsPerConnection: ok > 0 ? round(clientCpuMs / ok, 3) : null,
        postgresPctOfOneCore: store === 'postgres' ? round((pgCpuS / wallS) * 100) : null,
        machineCoresBusy: round(machineCores(mc0, mc1), 2),
        /** machine CPU used by neither the broker, the clients nor PostgreSQL (other work on the machine), in cores */
        otherCoresBusy: round(machineCores(mc0, mc1) - (brokerCpuMs / 1000 + clientCpuMs / 1000 + pgCpuS) / wallS, 2),
      },
      /** --until-fail: the most connections held, and what stopped the ramp */
      ceiling: opts.untilFail
        ? {
            reached: ok,
            brokerFds,
            fdLimit: limit,
            stoppedBy:
              failed >= opts.maxFailures
                ? `${failed} failures (${[...new Set(reps.flatMap((r) => r.errors).map((e) => e.replace(/^[^:]*: /, '')))].join('; ')}); broker process at ${brokerFds} of ${limit} file descriptors${limit !== null && brokerFds >= limit - 8 ? ': its fd limit' : ''}`
                : `the upper bound --connections ${opts.connections} (no failures: raise it)`,
          }
        : null,
      storms,
      stormRatio: stormRatio(storms),
      memoryMB: {
        rssKBPerConnection: ok > 0 ? round((after.rss - before.rss) / 1024 / ok, 1) : null,
        before: { rss: mb(before.rss), heapUsed: mb(before.heapUsed), external: mb(before.external) },
        idle: { rss: mb(after.rss), heapUsed: mb(after.heapUsed), external: mb(after.external) },
        per1000: {
          rss: per1000(before.rss, after.rss),
          heapUsed: per1000(before.heapUsed, after.heapUsed),
          external: per1000(before.external, after.external),
          arrayBuffers: per1000(before.arrayBuffers, after.arrayBuffers),
        },
      },
    }
    const f = figures
    console.log(
      [
        '',
        `== pulsegate mTLS connect: ${f.options.connections} devices, ${f.options.ramp > 0 ? `ramp ${f.options.ramp}/s` : 'unlimited ramp'} (≤ ${f.options.concurrency} handshakes in flight per worker), ${f.options.workers} worker(s), ${f.options.store} store${f.label ? ` [${f.label}]` : ''}`,
        `   load average ${f.loadavg.atRampEnd} (ramp end), ${f.loadavg.atIdleEnd} (idle end); machine busy ${f.cpu.machineCoresBusy} of 2 cores during the ramp, other work ${f.cpu.otherCoresBusy}`,
        `   connected ${f.connections.ok}, failed ${f.connections.failed}${f.connections.errors.length ? ` (${f.connections.errors.join('; ')})` : ''}; dropped after connect ${f.droppedAfterConnect}; broker sees ${f.connections.idleOnBroker} devices`,
        `   connections/s ${f.rate.connectionsPerS} over ${f.rate.rampS} s (best 1 s window ${f.rate.best1sWindow}/s)`,
        `   connect latency ms  p50 ${f.connectLatencyMs.p50}  p90 ${f.connectLatencyMs.p90}  p99 ${f.connectLatencyMs.p99}  max ${f.connectLatencyMs.max}`,
        `   CPU during ramp: broker ${f.cpu.brokerPctOfOneCore}% of a core (${f.cpu.brokerMsPerConnection} ms/connection, ELU ${f.cpu.brokerEventLoopUtilization}), clients ${f.cpu.clientsPctOfOneCore}% (${f.cpu.clientMsPerConnection} ms/connection)${f.cpu.postgresPctOfOneCore !== null ? `, postgres ${f.cpu.postgresPctOfOneCore}%` : ''}`,
        ...(f.ceiling
          ? [`   ceiling: ${f.ceiling.reached} idle mTLS connections held; stopped by ${f.ceiling.stoppedBy}`]
          : []),
        ...f.storms.map(
          (s) =>
            `   reconnect storm (${s.kind}): ${s.ok} of ${f.connections.ok} back in ${s.wallS} s = ${s.connectionsPerS}/s, latency p50 ${s.latencyMs.p50} p99 ${s.latencyMs.p99} ms; broker ${s.brokerMsPerConnect} ms CPU per connect; server handshakes full ${s.serverHandshakes.full} / resumed ${s.serverHandshakes.resumed}`,
        ),
        ...(f.stormRatio
          ? [
              `   resumed vs full, same run: ${f.stormRatio.rate}× the reconnect rate, ${f.stormRatio.brokerCpu}× the broker CPU per connect`,
            ]
          : []),
        `   broker RSS ${f.memoryMB.before.rss} MB → ${f.memoryMB.idle.rss} MB idle: ${f.memoryMB.per1000.rss} MB per 1,000 idle mTLS connections, ${f.memoryMB.rssKBPerConnection} KB each (heap ${f.memoryMB.per1000.heapUsed}, external ${f.memoryMB.per1000.external} MB per 1,000)${f.gcForced ? '' : ' [no --expose-gc: figures include garbage]'}`,
        '',
      ].join('\n'),
    )
    console.log(JSON.stringify(figures))
  } finally {
    for (const w of workers) w.child.kill()
    await broker.stop()
    log(`done in ${round((Date.now() - started) / 1000)} s`)
  }
}

interface StormFigures {
  kind: 'full' | 'resumed'
  ok: number
  failed: number
  clientResumed: number
  serverHandshakes: { full: number; resumed: number }
  wallS: number
  connectionsPerS: number
  brokerMsPerConnect: number | null
  latencyMs: ReturnType<typeof summarizeMs>
}

async function handshakeCounts(inst: BenchBroker['instance']): Promise<{ full: number; resumed: number }> {
  const m = await inst.metrics.registry.getSingleMetric('pulsegate_tls_handshakes_total')?.get()
  const of = (kind: string) =>
    (m?.values ?? []).filter((v) => v.labels['kind'] === kind).reduce((s, v) => s + Number(v.value), 0)
  return { full: of('full'), resumed: of('resumed') }
}

/** Everyone disconnects, then reconnects at once: with full handshakes, or resuming their TLS sessions. */
async function storm(workers: ConnectWorker[], inst: BenchBroker['instance'], resume: boolean): Promise<StormFigures> {
  const h0 = await handshakeCounts(inst)
  const connected = workers.map((w) => w.next('connected'))
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  for (const w of workers) w.send({ type: 'storm', resume })
  const reps = await Promise.all(connected)
  // the clock runs from the order to the last CONNACK; the close of the old connections is inside it for both kinds
  const wallS = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const h1 = await handshakeCounts(inst)
  const ok = reps.reduce((s, r) => s + r.ok, 0)
  const brokerMs = (cpu.user + cpu.system) / 1000
  return {
    kind: resume ? 'resumed' : 'full',
    ok,
    failed: reps.reduce((s, r) => s + r.failed, 0),
    clientResumed: reps.reduce((s, r) => s + r.resumed, 0),
    serverHandshakes: { full: h1.full - h0.full, resumed: h1.resumed - h0.resumed },
    wallS: round(wallS, 2),
    connectionsPerS: round(ok / wallS),
    brokerMsPerConnect: ok > 0 ? round(brokerMs / ok, 3) : null,
    latencyMs: summarizeMs(mergeHistograms(reps.map((r) => r.hist))),
  }
}

/** resumed ÷ full, over the rounds of one run */
function stormRatio(s: StormFigures[]): { rate: number; brokerCpu: number } | null {
  const sum = (kind: StormFigures['kind'], f: (x: StormFigures) => number) =>
    s.filter((x) => x.kind === kind).reduce((acc, x) => acc + f(x), 0)
  const full = sum('full', (x) => x.ok)
  const resumed = sum('resumed', (x) => x.ok)
  if (full === 0 || resumed === 0) return null
  const rate = (kind: StormFigures['kind']) => sum(kind, (x) => x.ok) / sum(kind, (x) => x.wallS)
  const cpuPer = (kind: StormFigures['kind']) =>
    sum(kind, (x) => (x.brokerMsPerConnect ?? 0) * x.ok) / sum(kind, (x) => x.ok)
  return { rate: round(rate('resumed') / rate('full'), 2), brokerCpu: round(cpuPer('resumed') / cpuPer('full'), 2) }
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
