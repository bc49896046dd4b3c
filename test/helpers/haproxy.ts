// A real HAProxy (Debian's haproxy) from deploy/haproxy.cfg, rendered through its environment variables with a
// test's ports, in front of a pulsegate started by the test. Also: free ports, the stats socket, the config check.
import { type ChildProcess, execFile, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const HAPROXY_CFG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../deploy/haproxy.cfg')

export async function freePort(host = '127.0.0.1'): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, host, r))
  const { port } = s.address() as net.AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}

export interface HaproxyPorts {
  mqtt: number
  mqtts: number
  mqttsTerminated: number
  ws: number
  stats: number
}

export interface Haproxy {
  ports: HaproxyPorts
  /** `show stat` rows: backend (pxname), server (svname), status */
  stat(): Promise<Array<{ backend: string; server: string; status: string }>>
  output(): string
  stop(): Promise<void>
}

export interface HaproxyTargets {
  host: string
  mqtt: number
  mqtts: number
  http: number
  /** the address HAProxy connects from (the one pulsegate trusts) */
  source: string
  tlsPem: string
  deviceCa: string
  dir: string
}

export function haproxyEnv(t: HaproxyTargets, ports: HaproxyPorts): NodeJS.ProcessEnv {
  return {
    ...process.env,
    LB_BIND: '127.0.0.1',
    LB_SOURCE: t.source,
    LB_MQTT_PORT: String(ports.mqtt),
    LB_MQTTS_PORT: String(ports.mqtts),
    LB_MQTTS_TERM_PORT: String(ports.mqttsTerminated),
    LB_WS_PORT: String(ports.ws),
    LB_STATS_PORT: String(ports.stats),
    LB_STATS_SOCKET: path.join(t.dir, 'haproxy.sock'),
    LB_TLS_PEM: t.tlsPem,
    LB_DEVICE_CA: t.deviceCa,
    LB_CHECK_INTER: '200ms',
    LB_MAX_CONN_RATE: '100000',
    LB_MAXCONN: '4000', // the fd limit here is 20,000; HAProxy needs ~2 per connection
    LB_LOG_LEVEL: 'info',
    PG_NODE1: t.host,
    PG_NODE2: t.host,
    PG_NODE3: t.host,
    PG_MQTT_PORT: String(t.mqtt),
    PG_MQTTS_PORT: String(t.mqtts),
    PG_HTTP_PORT: String(t.http),
  }
}

export function checkHaproxyConfig(env: NodeJS.ProcessEnv): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile('haproxy', ['-c', '-f', HAPROXY_CFG], { env }, (err, stdout, stderr) => {
      const code = err ? ((err as { code?: number }).code ?? 1) : 0
      resolve({ code: typeof code === 'number' ? code : 1, output: `${stdout}${stderr}` })
    })
  })
}

export async function startHaproxy(t: HaproxyTargets): Promise<Haproxy> {
  const ports: HaproxyPorts = {
    mqtt: await freePort(),
    mqtts: await freePort(),
    mqttsTerminated: await freePort(),
    ws: await freePort(),
    stats: await freePort(),
  }
  const env = haproxyEnv(t, ports)
  let out = ''
  const child: ChildProcess = spawn('haproxy', ['-db', '-f', HAPROXY_CFG], { env, stdio: ['ignore', 'pipe', 'pipe'] })
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  const exited = new Promise<void>((r) => child.once('exit', () => r()))
  const sock = env.LB_STATS_SOCKET as string
  const stat = async () => {
    const text = await new Promise<string>((resolve, reject) => {
      const c = net.connect(sock)
      let buf = ''
      c.on('data', (d) => {
        buf += d.toString()
      })
      c.on('end', () => resolve(buf))
      c.on('error', reject)
      c.end('show stat\n')
    })
    return text
      .split('\n')
      .filter((l) => l && !l.startsWith('#'))
      .map((l) => l.split(','))
      .map((f) => ({ backend: f[0] ?? '', server: f[1] ?? '', status: f[17] ?? '' }))
  }
  return {
    ports,
    stat,
    output: () => out,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM')
      await exited
      fs.rmSync(sock, { force: true })
    },
  }
}
