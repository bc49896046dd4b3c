// Messages an operator can act on: Redis unreachable is logged once per outage (and once when it returns), counted,
// and shown in /readyz; a port already in use names the PULSEGATE_*_PORT to set and exits non-zero without a stack
// trace; `pulsegate start` prints where the console, metrics and PKI are and how to connect a device.
import { type ChildProcess, spawn } from 'node:child_process'
import crypto from 'node:crypto'
import net from 'node:net'
import path from 'node:path'
import { Writable } from 'node:stream'
import { fileURLToPath } from 'node:url'
import { pino } from 'pino'
import { afterAll, describe, expect, it } from 'vitest'
import { ephemeralConfig } from '../../broker.config.js'
import { type Pulsegate, startPulsegate } from '../../src/broker.js'
import { initPki } from '../../src/identity/pki.js'
import { createTestDatabase, dropRedisPrefix, REDIS_URL, tempDir, waitFor } from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

const root = fileURLToPath(new URL('../..', import.meta.url))

/**
 * A port nobody listens on: 1 (tcpmux, privileged, never handed out by listen(0)). A port bound and closed again
 * could be taken by another test file's listen(0) meanwhile, and the error would no longer be ECONNREFUSED.
 */
const CLOSED_PORT = 1

interface LogLine {
  level: number
  msg: string
  connection?: string
  err?: string
}

function captureLog(lines: LogLine[] = []) {
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString().split('\n')) if (l.trim()) lines.push(JSON.parse(l) as LogLine)
      done()
    },
  })
  return { lines, log: pino({ level: 'info' }, stream) }
}

async function scrape(pg: Pulsegate): Promise<string> {
  return (await fetch(`http://127.0.0.1:${pg.ports.http}/metrics`)).text()
}

interface Readyz {
  status: string
  redis?: boolean
  dependencies: { database: { up: boolean }; redis?: { name: string; up: boolean; error: string | null }[] }
}
async function readyz(pg: Pulsegate): Promise<{ status: number; body: Readyz }> {
  const r = await fetch(`http://127.0.0.1:${pg.ports.http}/readyz`)
  return { status: r.status, body: (await r.json()) as Readyz }
}

describe('Redis unreachable', () => {
  const brokers: Pulsegate[] = []
  const cleanups: (() => Promise<void>)[] = []
  const prefix = `opmsg-${crypto.randomBytes(5).toString('hex')}`

  afterAll(async () => {
    for (const pg of brokers) await pg.stop()
    for (const c of cleanups) await c()
    await dropRedisPrefix(prefix)
  })

  const outage = (l: LogLine) => l.connection === 'leaderboard' && /is unreachable/.test(l.msg)
  const back = (l: LogLine) => l.connection === 'leaderboard' && /reachable again/.test(l.msg)

  async function start(redisUrl: string, lines: LogLine[] = []) {
    const db = await createTestDatabase()
    cleanups.push(db.drop)
    const dataDir = tempDir()
    await initPki(path.join(dataDir, 'pki'))
    const { log } = captureLog(lines)
    const config = ephemeralConfig(
      { dataDir, databaseUrl: db.url, logLevel: 'info', jwtSecret: 'test-secret-0123456789abcdef' },
      { redisUrl, cluster: { prefix }, readiness: { redisDownMs: 60_000 } },
    )
    const pg = await startPulsegate(config, { log })
    brokers.push(pg)
    return { pg, lines }
  }

  it('at a closed port: one error line naming the address and the cause; and cluster mode does not start', async () => {
    const port = CLOSED_PORT
    const lines: LogLine[] = []
    const failed = await start(`redis://:hunter2@127.0.0.1:${port}`, lines).then(
      () => null,
      (err: Error) => err,
    )
    // Cluster mode needs Redis to start (the CLI turns ioredis' error into one naming PULSEGATE_REDIS_URL).
    expect(failed?.name).toBe('MaxRetriesPerRequestError')
    // The start gave up after the cluster's commands were retried many times; the leaderboard's outage is one line.
    const reported = lines.filter(outage)
    expect(reported).toHaveLength(1)
    const first = reported[0] as LogLine
    expect(first.level).toBe(50) // error
    expect(first.msg).toContain('ECONNREFUSED')
    expect(first.msg).toContain(`127.0.0.1:${port}`)
    expect(first.msg).not.toContain('hunter2')
    expect(first.msg).toContain('PULSEGATE_READY_REDIS_DOWN_MS')
  }, 120_000)

  it('lost and back: one line each way, each outage counted once, /readyz details follow', async () => {
    const proxy = await startTcpProxy('127.0.0.1', Number(new URL(REDIS_URL).port || 6379))
    cleanups.push(() => proxy.close())
    const { pg, lines } = await start(`redis://127.0.0.1:${proxy.port}`)
    const lbUp = async () => metricValue(await scrape(pg), 'pulsegate_redis_up', { connection: 'leaderboard' }) === 1
    await waitFor(lbUp, 30_000)
    expect(lines.filter(outage)).toHaveLength(0)
    expect(metricValue(await scrape(pg), 'pulsegate_db_up')).toBe(1)
    for (const n of [1, 2]) {
      proxy.cut()
      await waitFor(() => lines.filter(outage).length === n, 30_000)
      await waitFor(async () => {
        const r = await readyz(pg)
        return r.body.dependencies.redis?.find((c) => c.name === 'leaderboard')?.up === false
      }, 30_000)
      proxy.restore()
      await waitFor(() => lines.filter(back).length === n, 30_000)
      await waitFor(lbUp, 30_000)
      const text = await scrape(pg)
      expect(metricValue(text, 'pulsegate_redis_outages_total', { connection: 'leaderboard' })).toBe(n)
      expect(lines.filter(outage)).toHaveLength(n)
      const up = await waitFor(async () => {
        const r = await readyz(pg)
        return r.body.dependencies.redis?.find((c) => c.name === 'leaderboard')?.up ? r : null
      }, 30_000)
      expect(up.body.dependencies.redis?.find((c) => c.name === 'leaderboard')?.error).toBeNull()
    }
  }, 180_000)
})

/** `pulsegate start` as a child process (the TypeScript sources through the test loader). */
function startCli(env: Record<string, string>): { child: ChildProcess; out: () => string; err: () => string } {
  let out = ''
  let err = ''
  const child = spawn(process.execPath, ['--import', './test/helpers/ts-loader.mjs', 'src/cli/main.ts', 'start'], {
    cwd: root,
    env: { ...process.env, PULSEGATE_LOG_FORMAT: 'json', PULSEGATE_LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString()
  })
  return { child, out: () => out, err: () => err }
}

const exited = (child: ChildProcess) =>
  new Promise<number | null>((resolve) => {
    if (child.exitCode !== null) resolve(child.exitCode)
    else child.once('exit', (code) => resolve(code))
  })

describe('pulsegate start', () => {
  const children: ChildProcess[] = []
  const drops: (() => Promise<void>)[] = []
  afterAll(async () => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL')
    for (const d of drops) await d()
  })

  async function baseEnv(): Promise<Record<string, string>> {
    const db = await createTestDatabase()
    drops.push(db.drop)
    return {
      PULSEGATE_DATA_DIR: tempDir(),
      PULSEGATE_DATABASE_URL: db.url,
      PULSEGATE_HOST: '127.0.0.1',
      PULSEGATE_MQTT_PORT: '0',
      PULSEGATE_MQTTS_PORT: '0',
      PULSEGATE_HTTP_PORT: '0',
    }
  }

  it('a port in use names the variable to set, exits non-zero, prints no stack trace', async () => {
    const busy = net.createServer()
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r))
    const port = (busy.address() as net.AddressInfo).port
    try {
      const cli = startCli({ ...(await baseEnv()), PULSEGATE_HTTP_PORT: String(port) })
      children.push(cli.child)
      const code = await exited(cli.child)
      expect(code).not.toBe(0)
      expect(cli.err()).toContain(`port ${port}`)
      expect(cli.err()).toContain('already in use')
      expect(cli.err()).toContain('set PULSEGATE_HTTP_PORT')
      expect(cli.err()).not.toMatch(/\n\s+at /) // no stack frames
      expect(cli.out()).not.toMatch(/\n\s+at /)
    } finally {
      await new Promise<void>((r) => busy.close(() => r()))
    }
  }, 120_000)

  it('the MQTT port in use names PULSEGATE_MQTT_PORT', async () => {
    const busy = net.createServer()
    await new Promise<void>((r) => busy.listen(0, '127.0.0.1', r))
    const port = (busy.address() as net.AddressInfo).port
    try {
      const cli = startCli({ ...(await baseEnv()), PULSEGATE_MQTT_PORT: String(port) })
      children.push(cli.child)
      expect(await exited(cli.child)).not.toBe(0)
      expect(cli.err()).toContain('set PULSEGATE_MQTT_PORT')
    } finally {
      await new Promise<void>((r) => busy.close(() => r()))
    }
  }, 120_000)

  it('the banner says where the console, metrics and PKI are and how to connect a device', async () => {
    const env = await baseEnv()
    const cli = startCli(env)
    children.push(cli.child)
    const banner = await waitFor(() => {
      if (cli.child.exitCode !== null) throw new Error(`exited: ${cli.err()}`)
      const i = cli.out().indexOf('pulsegate is running')
      return i >= 0 && cli.out().includes('connect an app') ? cli.out().slice(i) : null
    }, 90_000).catch((e: Error) => {
      throw new Error(`${e.message}\n${cli.out()}\n${cli.err()}`)
    })
    const http = /console\s+http:\/\/127\.0\.0\.1:(\d+)\//.exec(banner)
    expect(http).not.toBeNull()
    const httpPort = Number(http?.[1])
    expect(httpPort).toBeGreaterThan(0)
    expect(banner).toContain(`http://127.0.0.1:${httpPort}/metrics`)
    expect(banner).toContain('first start')
    expect(banner).toContain(path.join(env.PULSEGATE_DATA_DIR as string, 'pki'))
    expect(banner).toContain('pulsegate pki device')
    expect(banner).toMatch(/mosquitto_pub -h 127\.0\.0\.1 -p \d+ --cafile /)
    // What it names is there: the console page and the metrics answer on that port.
    expect((await fetch(`http://127.0.0.1:${httpPort}/`)).status).toBe(200)
    expect(await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text()).toContain('pulsegate_db_up')
    cli.child.kill('SIGTERM')
    expect(await exited(cli.child)).toBe(0)
  }, 120_000)
})
