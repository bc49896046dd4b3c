// bench/compare.ts — pulsegate against the brokers it should be measured by: the same swarm, one after the other, in
// one run, against
//   pulsegate       the full pipeline in this process (as bench/ingest.ts: a fresh PostgreSQL database per run,
//                   dropped afterwards; mTLS with each device's own certificate; commit before PUBACK)
//   aedes-mtls      a bare Aedes 1.2 (`Aedes.createBroker()`, defaults, no hooks; bench/lib/bare-aedes.ts) in a child
//                   process, TLS requiring the same device certificates: the same transport as pulsegate
//   aedes           the same bare Aedes on plain TCP: the same transport as the external broker
//   external        a broker at `--external-url` (default mqtt://127.0.0.1:1883, the development machines' Mosquitto;
//                   mqtts:// presents the device certificates and checks the server against `--external-ca`)
//   mosquitto-mtls  (opt-in) a Mosquitto started here (`--mosquitto-bin`) with require_certificate on the bench CA
// The swarm: `--connections` trackers, one connection each, whose readings come from the swarm simulator's device
// model (bench/lib/sim-model.ts: Wearer → Tracker → Firmware of simulators/, marathon or wellness; batches of
// `--batch` samples with hr, spo2, steps, cadence, skin temperature, respiration and GPS; CBOR), on a virtual clock
// starting `--lookback-h` hours ago, so a broker can be saturated and every broker receives byte-identical messages.
// The simulator itself (`pulsegate simulate`) is not used as the load: it runs devices in real time through MQTT.js,
// needs pulsegate's registry for users, events, apps and tokens, and cannot target a broker without them.
// Making a batch costs the model ~13 µs; pulsegate gets a new batch for every message (it stores them: new seq, new
// sample times), the bare brokers — which never read a payload — get each device's first `--replay` batches (64;
// made before the load starts, byte-identical to the first ones pulsegate gets) round and round, so that their
// generator spends its CPU on MQTT and TLS only and can keep up with them. `--replay 0`: new batches for all.
// The load comes from `--workers` forked generators (bench/lib/compare-worker.ts, the lean MQTT client of
// bench/lib/mqtt-lite.ts): QoS 1, at most `--inflight` unacknowledged per connection, as fast as PUBACKs return
// (`--rate 0`, saturation) or at `--rate` messages/s in total (open loop; missed sends are counted).
// Per broker, over a `--duration` s window after `--warmup` s:
//   - acked messages/s and readings/s (a reading = one stored row: a metric of a sample, or a GPS fix)
//   - ack latency publish → PUBACK p50/p90/p99/max (HDR, merged over the generators)
//   - broker CPU (% of one core: this process for pulsegate, /proc/<pid> for the others; the external broker's pid
//     is found from its listening socket when it runs on this machine as a user whose /proc we can read), RSS,
//     the generators' CPU (≥ 90 % of their cores flags the figure as generator-bound: a lower bound for that
//     broker), PostgreSQL backends' CPU, machine-wide CPU, load average
//   - pulsegate only: lost / duplicate readings, checked by query after the drain (every acknowledged reading must be
//     in `samples` or `positions` exactly once). The bare brokers store nothing: there is nothing to verify, and their
//     PUBACK means "received", not "committed" — the ratio is the price of durability, validation and authorization.
// Then the ratios pulsegate/bare Aedes (same transport), pulsegate/Aedes on TCP and pulsegate/external, a summary
// and one line of JSON with every figure.
//
// How to run (from the repository root; PostgreSQL on 127.0.0.1:5432 as for bench/ingest.ts):
//   npm run build
//   ulimit -n 20000
//   node dist/bench/compare.js                                  # 1,000 trackers, saturation, all four targets
//   node dist/bench/compare.js --rate 5000 --duration 20        # a fixed rate instead: compare latency at equal load
//   node dist/bench/compare.js --targets pulsegate,external --external-url mqtt://10.0.0.5:1883
//   node dist/bench/compare.js --targets pulsegate,aedes-mtls,mosquitto-mtls   # all three over mTLS
//   node dist/bench/compare.js --targets pulsegate --rate 3000 --cpu-profile /tmp/p.cpuprofile   # where its CPU goes
// On the shared 2-core machines wrap it: `flock /tmp/pulsegate-bench.lock node dist/bench/compare.js …`.
import { type ChildProcess, fork, spawn } from 'node:child_process'
import { once } from 'node:events'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import type { BrokerConfig } from '../broker.config.js'
import type { Format, Scenario } from '../simulators/protocol.js'
import type { BareAedesMessage } from './lib/bare-aedes.js'
import { type BenchBroker, provisionDevices, startBenchBroker } from './lib/broker.js'
import { type BenchPki, ensureBenchCerts } from './lib/certs.js'
import type {
  CompareDeviceResult,
  CompareWorkerInit,
  FromCompareWorker,
  ToCompareWorker,
} from './lib/compare-worker.js'
import {
  brokerBuildHash,
  counterSeries,
  cpuDelta,
  cpuOf,
  type LatencySummary,
  loadavg,
  machineCores,
  machineCpu,
  mb,
  mergeHistograms,
  postgresPids,
  procCpuSeconds,
  round,
  sleep,
  snapshotMetrics,
  summarizeMs,
} from './lib/stats.js'
import { num, oneOf, printHeaderAndExit, usage } from './lib/args.js'
import { startCpuProfile } from './lib/cpu-profile.js'
import { runSummary, type WindowReport, WorkerHandle } from './lib/worker-protocol.js'
import { freePort } from './lib/free-port.js'

const TARGETS = ['pulsegate', 'aedes-mtls', 'aedes', 'external', 'mosquitto-mtls'] as const
type TargetName = (typeof TARGETS)[number]

const { values: a } = parseArgs({
  options: {
    targets: { type: 'string', default: 'pulsegate,aedes-mtls,aedes,external' },
    'external-url': { type: 'string', default: 'mqtt://127.0.0.1:1883' },
    'external-ca': { type: 'string' },
    'mosquitto-bin': { type: 'string', default: '/usr/sbin/mosquitto' },
    connections: { type: 'string', default: '1000' },
    batch: { type: 'string', default: '5' },
    'interval-ms': { type: 'string', default: '1000' },
    scenario: { type: 'string', default: 'marathon' },
    format: { type: 'string', default: 'cbor' },
    inflight: { type: 'string', default: '4' },
    rate: { type: 'string', default: '0' },
    duration: { type: 'string', default: '15' },
    warmup: { type: 'string', default: '3' },
    workers: { type: 'string', default: '1' },
    ramp: { type: 'string', default: '1000' },
    'lookback-h': { type: 'string', default: '24' },
    replay: { type: 'string', default: '64' },
    seed: { type: 'string', default: '1' },
    'log-level': { type: 'string', default: 'warn' },
    label: { type: 'string', default: '' },
    // the pulsegate target's main thread, sampled over its measured window only (Chrome DevTools format)
    'cpu-profile': { type: 'string' },
    help: { type: 'boolean', default: false },
  },
})

if (a.help) printHeaderAndExit(import.meta.url)

const targets = (a.targets as string).split(',').map((t) => t.trim()) as TargetName[]
for (const t of targets) if (!TARGETS.includes(t)) usage(`--targets: unknown ${t} (known: ${TARGETS.join(', ')})`)
const scenario: Scenario = oneOf('scenario', a.scenario, ['marathon', 'wellness'])
const format: Format = oneOf('format', a.format, ['cbor', 'json'])
const externalUrl = new URL(a['external-url'] as string)
if (externalUrl.protocol !== 'mqtt:' && externalUrl.protocol !== 'mqtts:') usage('--external-url: mqtt:// or mqtts://')
if (externalUrl.protocol === 'mqtts:' && !a['external-ca']) usage('--external-url mqtts:// needs --external-ca')
const opts = {
  targets,
  connections: num('connections', a.connections, 1),
  batch: num('batch', a.batch, 1),
  intervalMs: num('interval-ms', a['interval-ms'], 10),
  scenario,
  format,
  inflight: num('inflight', a.inflight, 1),
  rate: num('rate', a.rate, 0),
  durationS: num('duration', a.duration, 1),
  warmupS: num('warmup', a.warmup, 0),
  workers: num('workers', a.workers, 1),
  ramp: num('ramp', a.ramp, 1),
  lookbackH: num('lookback-h', a['lookback-h'], 0.1),
  replayBatches: num('replay', a.replay, 0),
  seed: num('seed', a.seed, 0),
  externalUrl: externalUrl.href,
}

const log = (s: string) => process.stderr.write(`[compare] ${s}\n`)
/** This process' V8 heap sizing flags: passed on to the bare-Aedes child so that both brokers run with the same heap */
const HEAP_ARGS = process.execArgv.filter((f) =>
  /^--(max-semi-space-size|max-old-space-size|min-semi-space-size)(=|$)/.test(f),
)
/** how a describe line names them */
const HEAP_NOTE = HEAP_ARGS.length > 0 ? ` (node ${HEAP_ARGS.join(' ')})` : ''

/** The broker under test, however it runs: where to connect, how to read its CPU and memory, how to stop it. */
interface Target {
  name: TargetName
  /** what it is, for the summary */
  describe: string
  host: string
  port: number
  transport: 'mtls' | 'tcp'
  caPath: string
  /** CPU seconds (user + system) so far; null = not measurable */
  cpuSeconds(): number | null
  rssBytes(): number | null
  pulsegate: BenchBroker | null
  stop(): Promise<void>
}

function procRss(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
    return m ? Number(m[1]) * 1024 : null
  } catch {
    return null
  }
}

/** The pid of the process listening on a local TCP port (from /proc/net/tcp{,6} and the fd tables), if visible. */
function listeningPid(port: number): number | null {
  const inodes = new Set<string>()
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = ''
    try {
      text = fs.readFileSync(f, 'utf8')
    } catch {
      continue
    }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/)
      // local_address is ADDR:PORT in hex; st 0A = LISTEN; inode is the 10th column
      if (c.length > 9 && c[3] === '0A' && Number.parseInt((c[1] ?? '').split(':')[1] ?? '', 16) === port)
        inodes.add(`socket:[${c[9]}]`)
    }
  }
  if (inodes.size === 0) return null
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    let fds: string[]
    try {
      fds = fs.readdirSync(`/proc/${d}/fd`)
    } catch {
      continue
    }
    for (const fd of fds) {
      try {
        if (inodes.has(fs.readlinkSync(`/proc/${d}/fd/${fd}`))) return Number(d)
      } catch {
        // closed meanwhile
      }
    }
  }
  return null
}

function childTarget(
  name: TargetName,
  describe: string,
  child: ChildProcess,
  port: number,
  transport: 'mtls' | 'tcp',
  caPath: string,
): Target {
  const pid = child.pid as number
  return {
    name,
    describe,
    host: '127.0.0.1',
    port,
    transport,
    caPath,
    cpuSeconds: () => procCpuSeconds(pid),
    rssBytes: () => procRss(pid),
    pulsegate: null,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill('SIGTERM')
      await Promise.race([once(child, 'exit'), sleep(3000)])
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    },
  }
}

async function startBareAedes(name: 'aedes' | 'aedes-mtls', pki: BenchPki): Promise<Target> {
  const mtls = name === 'aedes-mtls'
  const args = mtls ? ['mtls', pki.caCert, pki.serverCert, pki.serverKey] : ['tcp']
  // The same V8 heap settings as pulsegate in this process (`node --max-semi-space-size=64 dist/bench/compare.js`):
  // both brokers on the same runtime. Nothing else of this process' flags (an inspector, a profiler) goes along.
  const child = fork(new URL('./lib/bare-aedes.js', import.meta.url), args, { execArgv: HEAP_ARGS, stdio: 'inherit' })
  const m = (await once(child, 'message')) as [BareAedesMessage]
  const msg = m[0]
  if (msg.type !== 'listening') throw new Error(`bare Aedes did not start: ${msg.message}`)
  const describe = `bare Aedes 1.2 (createBroker defaults, no hooks), child process${HEAP_NOTE}, ${mtls ? 'mTLS (client certificate required)' : 'plain TCP'}`
  return childTarget(name, describe, child, msg.port, mtls ? 'mtls' : 'tcp', pki.caCert)
}

async function startMosquittoMtls(pki: BenchPki): Promise<Target> {
  const bin = a['mosquitto-bin'] as string
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-compare-mosquitto-'))
  const port = await freePort()
  const conf = path.join(dir, 'mosquitto.conf')
  // `user` keeps the current user: mosquitto started as root would switch to `mosquitto`, which cannot read the keys.
  fs.writeFileSync(
    conf,
    [
      `user ${os.userInfo().username}`,
      'persistence false',
      'log_dest stderr',
      'log_type error',
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      `cafile ${pki.caCert}`,
      `certfile ${pki.serverCert}`,
      `keyfile ${pki.serverKey}`,
      'require_certificate true',
      '',
    ].join('\n'),
  )
  const child = spawn(bin, ['-c', conf], { stdio: ['ignore', 'inherit', 'inherit'] })
  child.on('error', (err) => log(`${bin}: ${err.message}`))
  // Ready when the port accepts a connection.
  const deadline = Date.now() + 5000
  for (;;) {
    const up = await new Promise<boolean>((r) => {
      const s = net.connect(port, '127.0.0.1', () => {
        s.destroy()
        r(true)
      })
      s.on('error', () => r(false))
    })
    if (up) break
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`${bin} did not listen on ${port}`)
    await sleep(50)
  }
  const t = childTarget(
    'mosquitto-mtls',
    `Mosquitto (${bin}) started here, mTLS (require_certificate, bench CA), no persistence`,
    child,
    port,
    'mtls',
    pki.caCert,
  )
  const stop = t.stop
  t.stop = async () => {
    await stop()
    fs.rmSync(dir, { recursive: true, force: true })
  }
  return t
}

function externalTarget(pki: BenchPki): Target {
  const u = externalUrl
  const port = Number(u.port || (u.protocol === 'mqtts:' ? 8883 : 1883))
  const local = ['127.0.0.1', 'localhost', '[::1]'].includes(u.hostname)
  const pid = local ? listeningPid(port) : null
  const mtls = u.protocol === 'mqtts:'
  let name = 'external broker'
  if (pid) {
    try {
      name = fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim()
    } catch {
      // gone
    }
  }
  return {
    name: 'external',
    describe: `${name} at ${u.href}${pid ? ` (pid ${pid})` : ' (CPU not measurable: not a local process we can see)'}, ${mtls ? 'mTLS with the device certificates' : 'plain TCP'}`,
    host: u.hostname === 'localhost' ? '127.0.0.1' : u.hostname.replace(/^\[|\]$/g, ''),
    port,
    transport: mtls ? 'mtls' : 'tcp',
    caPath: mtls ? (a['external-ca'] as string) : pki.caCert,
    cpuSeconds: () => (pid ? procCpuSeconds(pid) : null),
    rssBytes: () => (pid ? procRss(pid) : null),
    pulsegate: null,
    stop: async () => undefined,
  }
}

async function startPulsegateTarget(pki: BenchPki): Promise<Target> {
  const broker = await startBenchBroker('postgres', pki, {}, a['log-level'] as BrokerConfig['logLevel'])
  try {
    await provisionDevices(broker, pki.devices)
  } catch (err) {
    await broker.stop()
    throw err
  }
  return {
    name: 'pulsegate',
    describe: `pulsegate (full pipeline, build ${brokerBuildHash()}) in this process${HEAP_NOTE}, PostgreSQL database ${broker.dbName}, mTLS device certificates`,
    host: '127.0.0.1',
    port: broker.instance.ports.mqtts as number,
    transport: 'mtls',
    caPath: pki.caCert,
    cpuSeconds: () => {
      const u = process.cpuUsage()
      return (u.user + u.system) / 1e6
    },
    rssBytes: () => process.memoryUsage().rss,
    pulsegate: broker,
    stop: () => broker.stop(),
  }
}

interface Verification {
  status: 'ok' | 'failed' | 'none'
  reason: string | null
  ackedReadings: number
  foundInDb: number
  lost: number
  duplicates: number
  rowsInDb: number
  rejectedByBroker: number
}

interface TargetResult {
  target: TargetName
  describe: string
  transport: 'mtls' | 'tcp'
  url: string
  connections: { ok: number; failed: number; rampS: number; connectMs: LatencySummary; errors: string[] }
  windowS: number
  throughput: {
    messagesPerS: number
    readingsPerS: number
    samplesPerS: number
    sentMessagesPerS: number
    payloadMBPerS: number
    missedBySchedule: number
  }
  ackLatencyMs: LatencySummary
  broker: { cpuPctOfOneCore: number | null; usPerMessage: number | null; rssMB: number | null }
  generators: { cpuPctOfOneCore: number; usPerMessage: number | null; bound: boolean }
  postgresCpuPct: number | null
  machineCoresBusy: number
  loadavg: string
  run: { sentMessages: number; ackedMessages: number; closedDuringRun: number; closeErrors: string[]; drainMs: number }
  virtualClockAheadOfNowMs: number
  verification: Verification
}

async function runTarget(t: Target, pki: BenchPki, tStartMs: number): Promise<TargetResult> {
  const nW = opts.workers
  const workers = Array.from(
    { length: nW },
    () => new WorkerHandle<ToCompareWorker, FromCompareWorker>(new URL('./lib/compare-worker.js', import.meta.url)),
  )
  try {
    const connected = workers.map((w) => w.next('connected'))
    workers.forEach((w, i) => {
      const init: CompareWorkerInit = {
        type: 'init',
        host: t.host,
        port: t.port,
        transport: t.transport,
        caPath: t.caPath,
        devices: pki.devices.flatMap((d, k) =>
          k % nW === i ? [{ deviceId: d.deviceId, index: k, certPath: d.certPath, keyPath: d.keyPath }] : [],
        ),
        scenario: opts.scenario,
        format: opts.format,
        batch: opts.batch,
        intervalMs: opts.intervalMs,
        tStartMs,
        seed: opts.seed,
        inflight: opts.inflight,
        rate: opts.rate / nW,
        rampPerSec: opts.ramp / nW,
        keepaliveS: 60,
        // pulsegate stores what it gets: it must see new batches. The others never read a payload.
        replayBatches: t.pulsegate ? 0 : opts.replayBatches,
      }
      w.send(init)
    })
    const conn = await Promise.all(connected)
    const ok = conn.reduce((s, c) => s + c.ok, 0)
    const failed = conn.reduce((s, c) => s + c.failed, 0)
    const rampS = Math.max(...conn.map((c) => c.elapsedMs)) / 1000
    const errors = conn.flatMap((c) => c.errors).slice(0, 5)
    log(
      `${t.name}: connected ${ok}/${pki.devices.length} in ${round(rampS, 2)} s${failed ? ` (failed ${failed}: ${errors.slice(0, 2).join('; ')})` : ''}`,
    )
    if (ok === 0) throw new Error(`${t.name}: no connection succeeded (${errors.join('; ')})`)

    for (const w of workers) w.send({ type: 'start' })
    await sleep(opts.warmupS * 1000)

    const inst = t.pulsegate
    const pgPids = inst ? postgresPids() : []
    const backendPids = inst
      ? pgPids.filter((pid) => {
          try {
            return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(` ${inst.dbName} `)
          } catch {
            return false
          }
        })
      : []
    const windows = workers.map((w) => w.next('window'))
    const pg0 = cpuOf(backendPids)
    const mc0 = machineCpu()
    const stopProfile = inst && a['cpu-profile'] ? await startCpuProfile(a['cpu-profile'] as string) : null
    const cpu0 = t.cpuSeconds()
    const t0 = performance.now()
    for (const w of workers) w.send({ type: 'measure', on: true })
    await sleep(opts.durationS * 1000)
    for (const w of workers) w.send({ type: 'measure', on: false })
    const windowS = (performance.now() - t0) / 1000
    const cpu1 = t.cpuSeconds()
    if (stopProfile) {
      await stopProfile()
      log(`pulsegate: CPU profile of the window written to ${a['cpu-profile']} (the profiler's own cost is in its CPU)`)
    }
    const mc1 = machineCpu()
    const pg1 = cpuOf(backendPids)
    const rss = t.rssBytes()
    const load = loadavg()
    const win: WindowReport[] = await Promise.all(windows)

    const finals = workers.map((w) => w.next('final'))
    for (const w of workers) w.send({ type: 'stop', drainTimeoutMs: 30_000 })
    const fin = await Promise.all(finals)
    const devices = fin.flatMap((f) => f.devices)
    const verification = inst
      ? await verify(inst, devices)
      : {
          status: 'none' as const,
          reason: 'no database: a bare broker stores nothing, its PUBACK means received',
          ackedReadings: devices.reduce((s, d) => s + d.ackedReadings, 0),
          foundInDb: 0,
          lost: 0,
          duplicates: 0,
          rowsInDb: 0,
          rejectedByBroker: 0,
        }
    const exits = workers.map((w) => (w.child.exitCode === null ? once(w.child, 'exit') : null))
    for (const w of workers) w.send({ type: 'exit' })
    await Promise.race([Promise.all(exits), sleep(3000)])

    const perS = (k: 'ackedMsgs' | 'ackedReadings' | 'ackedSamples' | 'sentMsgs' | 'sentBytes') =>
      win.reduce((s, w) => s + w[k] / (w.elapsedMs / 1000), 0)
    const msgsPerS = perS('ackedMsgs')
    const brokerCpuPct = cpu0 !== null && cpu1 !== null ? ((cpu1 - cpu0) / windowS) * 100 : null
    const genCpuPct = win.reduce((s, w) => s + w.cpuMs / w.elapsedMs, 0) * 100
    return {
      target: t.name,
      describe: t.describe,
      transport: t.transport,
      url: `${t.transport === 'mtls' ? 'mqtts' : 'mqtt'}://${t.host}:${t.port}`,
      connections: {
        ok,
        failed,
        rampS: round(rampS, 2),
        connectMs: summarizeMs(mergeHistograms(conn.map((c) => c.hist))),
        errors,
      },
      windowS: round(windowS, 2),
      throughput: {
        messagesPerS: Math.round(msgsPerS),
        readingsPerS: Math.round(perS('ackedReadings')),
        samplesPerS: Math.round(perS('ackedSamples')),
        sentMessagesPerS: Math.round(perS('sentMsgs')),
        payloadMBPerS: round(perS('sentBytes') / 1048576, 2),
        missedBySchedule: win.reduce((s, w) => s + w.missed, 0),
      },
      ackLatencyMs: summarizeMs(mergeHistograms(win.map((w) => w.hist))),
      broker: {
        cpuPctOfOneCore: brokerCpuPct !== null ? round(brokerCpuPct) : null,
        usPerMessage: brokerCpuPct !== null && msgsPerS > 0 ? round((brokerCpuPct * 1e4) / msgsPerS, 1) : null,
        rssMB: rss !== null ? mb(rss) : null,
      },
      generators: {
        cpuPctOfOneCore: round(genCpuPct),
        usPerMessage: msgsPerS > 0 ? round((genCpuPct * 1e4) / msgsPerS, 1) : null,
        // A generator near a full core cannot offer more: the broker might take more than it was given.
        bound: opts.rate === 0 && genCpuPct >= 90 * nW,
      },
      postgresCpuPct: inst ? round((cpuDelta(pg0, pg1) / windowS) * 100) : null,
      machineCoresBusy: round(machineCores(mc0, mc1), 2),
      loadavg: load,
      run: runSummary(fin),
      virtualClockAheadOfNowMs: Math.max(0, Math.max(...devices.map((d) => d.clockMs)) - Date.now()),
      verification,
    }
  } finally {
    for (const w of workers) if (w.child.exitCode === null) w.child.kill()
  }
}

/**
 * Every acknowledged reading must be stored exactly once. A device's acked batches cover known time ranges (its
 * samples are contiguous in time), so the rows found in those ranges (samples of metrics 1–6, positions) are compared
 * with the readings acked; readings the broker refused as implausible are counted apart (from its metrics).
 */
async function verify(b: BenchBroker, devices: CompareDeviceResult[]): Promise<Verification> {
  const d: number[] = []
  const lo: number[] = []
  const hi: number[] = []
  let acked = 0
  for (const dev of devices) {
    acked += dev.ackedReadings
    const key = b.deviceKeys.get(dev.deviceId) as number
    for (const [t0, t1] of dev.ranges) {
      d.push(key)
      lo.push(t0)
      hi.push(t1)
    }
  }
  const db = b.instance.db
  const found = await db.query<{ n: string }>(
    `SELECT coalesce(sum(x.c) + sum(y.c), 0)::bigint AS n
     FROM unnest($1::int4[], $2::float8[], $3::float8[]) AS r(d, lo, hi)
     CROSS JOIN LATERAL (SELECT count(DISTINCT (s.metric, s.time)) AS c FROM samples s
       WHERE s.device_key = r.d AND s.metric BETWEEN 1 AND 6
         AND s.time >= to_timestamp(r.lo / 1000.0) AND s.time <= to_timestamp(r.hi / 1000.0)) x
     CROSS JOIN LATERAL (SELECT count(DISTINCT p.time) AS c FROM positions p
       WHERE p.device_key = r.d
         AND p.time >= to_timestamp(r.lo / 1000.0) AND p.time <= to_timestamp(r.hi / 1000.0)) y`,
    [d, lo, hi],
  )
  const totals = await db.query<{ rows: string; distinct: string }>(
    `SELECT (SELECT count(*) FROM samples WHERE metric BETWEEN 1 AND 6) + (SELECT count(*) FROM positions) AS rows,
            (SELECT count(DISTINCT (device_key, metric, time)) FROM samples WHERE metric BETWEEN 1 AND 6)
              + (SELECT count(DISTINCT (device_key, time)) FROM positions) AS distinct`,
  )
  const m = await snapshotMetrics(b.instance.metrics.registry)
  const rejected = Object.values(
    counterSeries({ values: new Map(), histograms: new Map() }, m, 'pulsegate_ingest_samples_rejected_total'),
  ).reduce((s, v) => s + v, 0)
  const foundN = Number(found.rows[0]?.n ?? 0)
  const rows = Number(totals.rows[0]?.rows ?? 0)
  const duplicates = rows - Number(totals.rows[0]?.distinct ?? 0)
  const lost = Math.max(0, acked - rejected - foundN)
  return {
    status: lost === 0 && duplicates === 0 ? 'ok' : 'failed',
    reason: null,
    ackedReadings: acked,
    foundInDb: foundN,
    lost,
    duplicates,
    rowsInDb: rows,
    rejectedByBroker: rejected,
  }
}

async function startTarget(name: TargetName, pki: BenchPki): Promise<Target> {
  switch (name) {
    case 'pulsegate':
      return startPulsegateTarget(pki)
    case 'aedes':
    case 'aedes-mtls':
      return startBareAedes(name, pki)
    case 'mosquitto-mtls':
      return startMosquittoMtls(pki)
    case 'external':
      return externalTarget(pki)
  }
}

const ratio = (x: number | undefined, y: number | undefined) => (x !== undefined && y ? round(x / y, 3) : null)

async function main() {
  const started = Date.now()
  log(`load average ${loadavg()}; options ${JSON.stringify(opts)}`)
  const pki = await ensureBenchCerts(opts.connections, { onProgress: (d, t) => log(`issued ${d}/${t} certificates`) })
  // One clock for every broker: the same seed and start make the same messages, byte for byte.
  const tStartMs = Math.floor((Date.now() - opts.lookbackH * 3_600_000) / 1000) * 1000
  const results: TargetResult[] = []
  let current: Target | null = null
  const onSignal = () => {
    log('interrupted: stopping the broker under test')
    void (current?.stop() ?? Promise.resolve()).finally(() => process.exit(130))
  }
  process.once('SIGINT', onSignal)
  process.once('SIGTERM', onSignal)
  for (const name of opts.targets) {
    const t = await startTarget(name, pki)
    current = t
    try {
      log(`${name}: ${t.describe}`)
      global.gc?.()
      results.push(await runTarget(t, pki, tStartMs))
    } finally {
      await t.stop()
      current = null
    }
    await sleep(1000) // let the machine settle (closed sockets, the dropped database) before the next broker
  }

  const by = (n: TargetName) => results.find((r) => r.target === n)
  const pgr = by('pulsegate')
  /** throughput: pulsegate / other (1 = as fast); CPU: the broker's CPU per message, pulsegate / other (1 = as cheap) */
  const vs = (n: TargetName) => {
    const r = by(n)
    return {
      messages: ratio(pgr?.throughput.messagesPerS, r?.throughput.messagesPerS),
      readings: ratio(pgr?.throughput.readingsPerS, r?.throughput.readingsPerS),
      cpuPerMessage: ratio(pgr?.broker.usPerMessage ?? undefined, r?.broker.usPerMessage ?? undefined),
    }
  }
  const ratios = {
    pulsegateOverAedesMtls: vs('aedes-mtls'),
    pulsegateOverAedesTcp: vs('aedes'),
    pulsegateOverExternal: vs('external'),
    pulsegateOverMosquittoMtls: vs('mosquitto-mtls'),
  }
  const o = opts
  const lines = [
    '',
    `== pulsegate vs bare brokers: ${o.connections} simulated trackers (${o.scenario}, ${o.format}, batch ${o.batch}, sample every ${o.intervalMs} ms of virtual time), QoS 1, inflight ${o.inflight}, ${o.rate === 0 ? 'saturation' : `target ${o.rate} msg/s`}, ${o.workers} generator(s), window ${o.durationS} s${a.label ? ` [${a.label}]` : ''}`,
  ]
  for (const r of results) {
    const v = r.verification
    lines.push(
      `-- ${r.target}: ${r.describe}`,
      `   msg/s ${r.throughput.messagesPerS}   readings/s ${r.throughput.readingsPerS}   (samples/s ${r.throughput.samplesPerS}, ${r.throughput.payloadMBPerS} MB/s on the wire)${o.rate ? `   sent ${r.throughput.sentMessagesPerS}/s, missed ${r.throughput.missedBySchedule}` : ''}`,
      `   ack ms  p50 ${r.ackLatencyMs.p50}  p90 ${r.ackLatencyMs.p90}  p99 ${r.ackLatencyMs.p99}  max ${r.ackLatencyMs.max}  (n=${r.ackLatencyMs.count})`,
      `   broker CPU ${r.broker.cpuPctOfOneCore ?? 'n/a'}% of a core (${r.broker.usPerMessage ?? 'n/a'} µs/msg), RSS ${r.broker.rssMB ?? 'n/a'} MB${r.postgresCpuPct !== null ? `; postgres backends ${r.postgresCpuPct}%` : ''}; generators ${r.generators.cpuPctOfOneCore}% (${r.generators.usPerMessage} µs/msg)${r.generators.bound ? ' GENERATOR-BOUND: a lower bound for this broker' : ''}`,
      `   machine ${r.machineCoresBusy} of ${os.availableParallelism()} cores busy, load average ${r.loadavg}; connections ${r.connections.ok} ok / ${r.connections.failed} failed, closed during run ${r.run.closedDuringRun}`,
      v.status === 'none'
        ? `   verification: none (${v.reason}); acked readings ${v.ackedReadings}`
        : `   verification ${v.status}: acked readings ${v.ackedReadings}, found ${v.foundInDb}, lost ${v.lost}, duplicates ${v.duplicates}, refused as implausible ${v.rejectedByBroker}`,
    )
  }
  const fmt = (r: ReturnType<typeof vs>) =>
    r.messages === null
      ? 'n/a'
      : `${r.messages} (readings ${r.readings}); broker CPU per message ×${r.cpuPerMessage ?? 'n/a'}`
  lines.push(
    `-- ratios: throughput of pulsegate / the other (1 = as fast${o.rate ? '; at a fixed rate both should be 1: compare latency and CPU' : ''}); CPU per message pulsegate / the other`,
    `   pulsegate / bare Aedes, mTLS both: ${fmt(ratios.pulsegateOverAedesMtls)}`,
    `   pulsegate / bare Aedes on TCP:     ${fmt(ratios.pulsegateOverAedesTcp)}`,
    `   pulsegate / external (${o.externalUrl}): ${fmt(ratios.pulsegateOverExternal)}`,
    ...(by('mosquitto-mtls')
      ? [`   pulsegate / Mosquitto, mTLS both:  ${fmt(ratios.pulsegateOverMosquittoMtls)}`]
      : []),
    '   transports: pulsegate always mTLS (its device listener); aedes-mtls and mosquitto-mtls require the same client',
    '   certificates; aedes and mqtt:// externals are plain TCP, so those ratios include the cost of TLS. Only pulsegate',
    '   commits before its PUBACK; the others acknowledge on receipt and store nothing.',
    '',
  )
  console.log(lines.join('\n'))
  console.log(
    JSON.stringify({
      bench: 'compare',
      label: a.label,
      node: process.version,
      brokerBuild: brokerBuildHash(),
      options: opts,
      tStartMs,
      results,
      ratios,
      elapsedS: round((Date.now() - started) / 1000),
    }),
  )
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
