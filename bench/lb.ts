// bench/lb.ts — what an idle device connection costs behind HAProxy, both ways: mTLS passthrough (HAProxy relays
// TCP with a PROXY v2 header, pulsegate does the TLS) against TLS terminated at HAProxy (HAProxy does the TLS and
// passes the certificate identity in PROXY v2 TLVs to pulsegate's plain MQTT listener, `proxy.tlsIdentity`).
//
// What it measures: pulsegate in this process (fresh PostgreSQL database, the bench PKI of bench/lib/certs.ts),
// a real HAProxy (Debian's haproxy) started from deploy/haproxy.cfg with this run's ports, and one forked client
// process (bench/lib/connect-worker.ts) opening `--connections` mTLS MQTT connections through HAProxy at `--ramp`
// per second. Per mode, after every connection is up and idle for `--idle` s:
//   - pulsegate RSS per connection: (RSS after − RSS before) / connections, after global.gc() with --expose-gc
//   - HAProxy RSS per connection (VmRSS of its process, same difference), and the sum of both
//   - pulsegate and HAProxy CPU ms per connection during the ramp (handshake + CONNACK)
//   - connect latency p50/p99 (TLS connect → CONNACK) and failures
// Modes run one after the other in one process (passthrough first); between them every connection is closed and the
// broker waits until it holds none. Caveat: Node does not hand the first mode's memory back to the OS, so the
// second mode's pulsegate RSS delta reads low (even negative); for that figure run the mode alone
// (`--mode terminate`). HAProxy keeps freed pool memory as well, so its second-mode figure may read low too. Small sizes are the point (a per-connection figure, not a ceiling): HAProxy
// needs two descriptors per connection and the fd limit here is 20,000.
//
// How to run (from the repository root):
//   npm run build
//   node --expose-gc dist/bench/lb.js --connections 500 --ramp 200
//   node --expose-gc dist/bench/lb.js --connections 2000 --mode terminate
// Prints a summary per mode, then one line of JSON.
import { type ChildProcess, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { num, oneOf, printHeaderAndExit } from './lib/args.js'
import { provisionDevices, startBenchBroker } from './lib/broker.js'
import { ensureBenchCerts } from './lib/certs.js'
import type { FromConnectWorker, ToConnectWorker } from './lib/connect-worker.js'
import { loadavg, mergeHistograms, procCpuSeconds, round, sleep, summarizeMs } from './lib/stats.js'
import { WorkerHandle } from './lib/worker-protocol.js'
import { freePort } from './lib/free-port.js'

const { values: a } = parseArgs({
  options: {
    connections: { type: 'string', default: '500' },
    ramp: { type: 'string', default: '200' },
    concurrency: { type: 'string', default: '64' },
    idle: { type: 'string', default: '3' },
    mode: { type: 'string', default: 'both' },
    help: { type: 'boolean', default: false },
  },
})
if (a.help) printHeaderAndExit(import.meta.url)
const opts = {
  connections: num('connections', a.connections, 1),
  ramp: num('ramp', a.ramp, 0),
  concurrency: num('concurrency', a.concurrency, 1),
  idleS: num('idle', a.idle, 0),
  mode: oneOf('mode', a.mode, ['both', 'passthrough', 'terminate']),
}
const log = (s: string) => process.stderr.write(`[lb-bench] ${s}\n`)
const LB_SOURCE = '127.0.0.2'
const CFG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../deploy/haproxy.cfg')

function rssOf(pid: number): number {
  const line = fs
    .readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith('VmRSS:'))
  return Number(line?.split(/\s+/)[1] ?? 0) * 1024
}

function statSocket(sock: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const c = net.connect(sock)
    let buf = ''
    c.on('data', (d) => {
      buf += d.toString()
    })
    c.on('end', () => resolve(buf))
    c.on('error', reject)
    c.end('show stat\n')
  })
}

async function main() {
  log(`load average ${loadavg()}; options ${JSON.stringify(opts)}`)
  const pki = await ensureBenchCerts(opts.connections, { onProgress: (d, t) => log(`issued ${d}/${t} certificates`) })
  const broker = await startBenchBroker('postgres', pki, {
    proxy: { mqtt: 'required', mqtts: 'required', http: 'optional', trusted: [LB_SOURCE], tlsIdentity: true },
  })
  let haproxy: ChildProcess | null = null
  try {
    await provisionDevices(broker, pki.devices)
    const inst = broker.instance
    const dir = broker.dataDir
    const pem = path.join(dir, 'lb.pem')
    fs.writeFileSync(
      pem,
      `${fs.readFileSync(pki.serverCert, 'utf8').trim()}\n${fs.readFileSync(pki.serverKey, 'utf8').trim()}\n`,
    )
    const ports = { passthrough: await freePort(), terminate: await freePort() }
    const sock = path.join(dir, 'haproxy.sock')
    const env = {
      ...process.env,
      LB_BIND: '127.0.0.1',
      LB_SOURCE,
      LB_MQTT_PORT: String(await freePort()),
      LB_MQTTS_PORT: String(ports.passthrough),
      LB_MQTTS_TERM_PORT: String(ports.terminate),
      LB_WS_PORT: String(await freePort()),
      LB_STATS_PORT: String(await freePort()),
      LB_STATS_SOCKET: sock,
      LB_TLS_PEM: pem,
      LB_DEVICE_CA: pki.caCert,
      LB_MAXCONN: String(Math.max(1000, opts.connections + 200)),
      LB_LOG_LEVEL: 'warning',
      PG_NODE1: '127.0.0.1',
      PG_NODE2: '127.0.0.1',
      PG_NODE3: '127.0.0.1',
      PG_MQTT_PORT: String(inst.ports.mqtt),
      PG_MQTTS_PORT: String(inst.ports.mqtts),
      PG_HTTP_PORT: String(inst.ports.http),
    }
    const lb = spawn('haproxy', ['-db', '-f', CFG], { env, stdio: ['ignore', 'ignore', 'inherit'] })
    haproxy = lb
    const lbPid = lb.pid as number
    for (let i = 0; ; i++) {
      const up = await statSocket(sock).then(
        (s) =>
          s.split('\n').filter((l) => /^pulsegate_mqtts?(_tls_identity)?,node/.test(l) && l.includes(',UP,')).length,
        () => 0,
      )
      if (up === 9) break
      if (i > 300) throw new Error('HAProxy never saw the node ready')
      await sleep(100)
    }
    const clientsById = () => (inst.broker as unknown as { clients: Record<string, unknown> }).clients
    const results: Record<string, unknown> = {}
    const modes = opts.mode === 'both' ? (['passthrough', 'terminate'] as const) : [opts.mode]
    for (const mode of modes) {
      await sleep(500)
      global.gc?.()
      const rss0 = process.memoryUsage().rss
      const lbRss0 = rssOf(lbPid)
      const cpu0 = process.cpuUsage()
      const lbCpu0 = procCpuSeconds(lbPid) ?? 0
      const w = new WorkerHandle<ToConnectWorker, FromConnectWorker>(
        new URL('./lib/connect-worker.js', import.meta.url),
        [],
        (m) => m.type === 'progress',
      )
      await sleep(300)
      const connected = w.next('connected')
      w.send({
        type: 'init',
        host: '127.0.0.1',
        port: ports[mode],
        caPath: pki.caCert,
        devices: pki.devices.map((d) => ({ deviceId: d.deviceId, certPath: d.certPath, keyPath: d.keyPath })),
        rampPerSec: opts.ramp,
        concurrency: opts.concurrency,
        keepaliveS: 60,
        timeoutMs: 30_000,
        stopAfterFailures: 0,
      })
      const rep = await connected
      const cpu = process.cpuUsage(cpu0)
      const lbCpuS = (procCpuSeconds(lbPid) ?? 0) - lbCpu0
      await sleep(opts.idleS * 1000)
      global.gc?.()
      const rss1 = process.memoryUsage().rss
      const lbRss1 = rssOf(lbPid)
      const n = Math.max(1, rep.ok)
      const lat = summarizeMs(mergeHistograms([rep.hist]))
      const r = {
        connected: rep.ok,
        failed: rep.failed,
        errors: rep.errors.slice(0, 3),
        brokerRssPerConnKB: round((rss1 - rss0) / n / 1024),
        haproxyRssPerConnKB: round((lbRss1 - lbRss0) / n / 1024),
        totalRssPerConnKB: round((rss1 - rss0 + lbRss1 - lbRss0) / n / 1024),
        brokerCpuMsPerConn: round((cpu.user + cpu.system) / 1000 / n),
        haproxyCpuMsPerConn: round((lbCpuS * 1000) / n),
        connectP50Ms: lat.p50,
        connectP99Ms: lat.p99,
      }
      results[mode] = r
      log(`${mode}: ${JSON.stringify(r)}`)
      const closed = w.next('closed')
      w.send({ type: 'close' })
      await closed
      for (let i = 0; Object.keys(clientsById()).length > 0; i++) {
        if (i > 600) throw new Error('connections did not drain')
        await sleep(100)
      }
    }
    process.stdout.write(
      `\nRSS per idle device connection behind HAProxy (${opts.connections} connections, 127.0.0.1):\n` +
        Object.entries(results)
          .map(([m, r]) => {
            const x = r as Record<string, number>
            return `  ${m.padEnd(12)} pulsegate ${x.brokerRssPerConnKB} KB + HAProxy ${x.haproxyRssPerConnKB} KB = ${x.totalRssPerConnKB} KB; CPU/conn pulsegate ${x.brokerCpuMsPerConn} ms, HAProxy ${x.haproxyCpuMsPerConn} ms; connect p50 ${x.connectP50Ms} ms p99 ${x.connectP99Ms} ms; ${x.connected} ok ${x.failed} failed`
          })
          .join('\n') +
        `\n${JSON.stringify({ bench: 'lb', options: opts, results, loadavg: loadavg() })}\n`,
    )
  } finally {
    if (haproxy && haproxy.exitCode === null) {
      const exited = new Promise((r) => haproxy?.once('exit', r))
      haproxy.kill('SIGTERM')
      await exited
    }
    await broker.stop()
  }
}

main().catch((err: Error) => {
  log(`failed: ${err.stack ?? err.message}`)
  process.exit(1)
})
