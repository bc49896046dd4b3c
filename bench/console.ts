// Frame time of the race-control console with 50,000 runners, in Debian's Chromium (headless, puppeteer-core).
// The feed is generated in the broker process and published through the broker's own publish (the path the outputs'
// PositionFeed and leaderboard tick take: Aedes → MQTT/WebSocket → MQTT.js in the page), not through the ingest
// pipeline: 50,000 trackers on this machine would measure the pipeline, not the page. Every second each runner moves
// along a closed course and all of them go out in PositionsMessages of POSITIONS_PER_MESSAGE, with a top-20
// leaderboard and, at the start, open alerts pinned on the map. The page's own figures (window.__console.perf: the
// requestAnimationFrame deltas and the time drawMap takes) are read after a warm-up (every runner drawn once).
// Run: npm run build && node dist/bench/console.js [--runners 50000] [--seconds 20] [--alerts 50]
import crypto from 'node:crypto'
import os from 'node:os'
import path from 'node:path'
import fs from 'node:fs'
import { parseArgs } from 'node:util'
import puppeteer from 'puppeteer-core'
import { ephemeralConfig } from '../broker.config.js'
import { startPulsegate } from '../src/broker.js'
import { initPki } from '../src/identity/pki.js'
import { createLogger } from '../src/log.js'
import type { AlertMessage, LeaderboardMessage, PositionsMessage } from '../src/outputs/payloads.js'
import { POSITIONS_PER_MESSAGE } from '../src/outputs/positions.js'
import { PG_ADMIN_URL } from './lib/broker.js'
import { adminSql } from './lib/fresh-store.js'
import { loadavg } from './lib/stats.js'

const { values } = parseArgs({
  options: {
    runners: { type: 'string', default: '50000' },
    seconds: { type: 'string', default: '20' },
    alerts: { type: 'string', default: '50' },
    chromium: { type: 'string', default: process.env.PULSEGATE_CHROMIUM ?? '/usr/bin/chromium' },
  },
})
const N = Number(values.runners)
const SECONDS = Number(values.seconds)
const ALERTS = Number(values.alerts)
const EVENT = 'bench-console'
/** the page as the functions run in it see it (compiled without lib.dom) */
interface Dom {
  document: { getElementById(id: string): { dataset: Record<string, string | undefined> } | null }
}

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-bench-console-'))
const dbName = `pulsegate_bench_${crypto.randomBytes(5).toString('hex')}`
await adminSql(`CREATE DATABASE ${dbName}`)
await initPki(path.join(dataDir, 'pki'))
const config = ephemeralConfig(
  {
    dataDir,
    databaseUrl: PG_ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`),
    logLevel: 'warn',
    jwtSecret: 'bench-secret-0123456789abcdef',
  },
  {},
)
const pg = await startPulsegate(config, { log: createLogger('warn') })
const token = await pg.tokens.sign({ sub: 'bench-medic', role: 'medic', ttl: 3600, events: [EVENT] })

// The course: an ellipse of about 42 km around a centre, each runner at its own progress with a lateral offset.
const LAT0 = 52.52
const LON0 = 13.405
const progress = new Float64Array(N)
const speed = new Float64Array(N)
const lane = new Float64Array(N)
for (let i = 0; i < N; i++) {
  progress[i] = Math.random()
  speed[i] = (2.2 + Math.random() * 2.5) / 42_000 // laps per second at 2.2–4.7 m/s
  lane[i] = (Math.random() - 0.5) * 0.0008
}
const at = (i: number) => {
  const a = (progress[i] as number) * 2 * Math.PI
  return {
    lat: LAT0 + (0.06 + (lane[i] as number)) * Math.sin(a),
    lon: LON0 + (0.1 + (lane[i] as number)) * Math.cos(a),
  }
}
const userId = (i: number) => `r${String(i).padStart(6, '0')}`

function tick(): void {
  const t = Date.now()
  for (let from = 0; from < N; from += POSITIONS_PER_MESSAGE) {
    const runners: PositionsMessage['runners'] = []
    for (let i = from; i < Math.min(N, from + POSITIONS_PER_MESSAGE); i++) {
      progress[i] = ((progress[i] as number) + (speed[i] as number)) % 1
      runners.push({ userId: userId(i), t, ...at(i), alert: i < ALERTS })
    }
    const msg: PositionsMessage = { eventId: EVENT, t, runners }
    pg.publish(`events/${EVENT}/positions`, JSON.stringify(msg), 0, false)
  }
  const top: LeaderboardMessage['top'] = Array.from({ length: 20 }, (_, k) => ({
    rank: k + 1,
    userId: userId(k),
    distanceM: 42_000 - k * 150,
    paceSPerKm: 240 + k,
    etaS: 3 * 3600 + k * 30,
  }))
  pg.publish(`events/${EVENT}/leaderboard`, JSON.stringify({ eventId: EVENT, t, runners: N, top }), 0, true)
}

const browser = await puppeteer.launch({
  executablePath: values.chromium,
  headless: true,
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  protocolTimeout: 120_000,
})
let timer: NodeJS.Timeout | null = null
try {
  const page = await browser.newPage()
  await page.setViewport({ width: 1400, height: 900 })
  const errors: string[] = []
  page.on('pageerror', (err) => errors.push((err as Error).message))
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(m.text())
  })
  await page.goto(`http://127.0.0.1:${pg.ports.http}/#token=${token}&event=${EVENT}`, { waitUntil: 'load' })
  await page.waitForFunction(
    () => (globalThis as unknown as Dom).document.getElementById('conn')?.dataset.state === 'connected',
    { timeout: 60_000 },
  )
  tick()
  timer = setInterval(tick, 1000)
  for (let k = 0; k < ALERTS; k++) {
    const p = at(k)
    const alert: AlertMessage = {
      id: crypto.randomUUID(),
      kind: 'hr_high',
      severity: 'critical',
      state: 'opened',
      userId: userId(k),
      deviceId: `${userId(k)}-w`,
      eventId: EVENT,
      openedAt: Date.now(),
      resolvedAt: null,
      evidence: { t: Date.now(), hr: 200, lat: p.lat, lon: p.lon },
    }
    pg.publish(`events/${EVENT}/alerts`, JSON.stringify(alert), 1, false)
  }
  // Warm-up: every runner known and drawn once; then the figures start from zero.
  await page.waitForFunction(
    (n: number) => {
      const g = globalThis as unknown as { __console: { perf: { drawn: number } } }
      return g.__console.perf.drawn >= n
    },
    { timeout: 90_000 },
    N,
  )
  await page.evaluate(() => {
    const p = (globalThis as unknown as { __console: { perf: Record<string, number | number[]> } }).__console.perf
    p.frames = []
    p.draws = []
    p.positions = 0
    p.messages = 0
  })
  const started = Date.now()
  await new Promise((r) => setTimeout(r, SECONDS * 1000)) // the measurement window itself, not a wait for a result
  const perf = await page.evaluate(() => {
    const p = (globalThis as unknown as { __console: { perf: Record<string, number | number[]> } }).__console.perf
    return {
      frames: p.frames as number[],
      draws: p.draws as number[],
      drawn: p.drawn as number,
      positions: p.positions as number,
    }
  })
  const elapsed = (Date.now() - started) / 1000
  const q = (a: number[], f: number) => {
    const s = [...a].sort((x, y) => x - y)
    return s.length ? (s[Math.min(s.length - 1, Math.floor(f * s.length))] as number) : Number.NaN
  }
  const fmt = (a: number[]) =>
    `n=${a.length} p50=${q(a, 0.5).toFixed(2)} p99=${q(a, 0.99).toFixed(2)} max=${Math.max(...a).toFixed(2)} ms`
  console.log(`console bench: ${N} runners, ${SECONDS} s, Chromium headless, load ${loadavg()}`)
  console.log(`  positions received by the page: ${Math.round(perf.positions / elapsed)}/s; drawn: ${perf.drawn}`)
  console.log(`  rAF delta:  ${fmt(perf.frames)}`)
  console.log(`  draw time:  ${fmt(perf.draws)} (budget 16 ms)`)
  console.log(`  frames over 16 ms of drawing: ${perf.draws.filter((d) => d > 16).length}`)
  if (errors.length) console.log(`  page errors: ${errors.slice(0, 5).join(' | ')}`)
} finally {
  if (timer) clearInterval(timer)
  await browser.close()
  await pg.stop()
  await adminSql(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`)
  fs.rmSync(dataDir, { recursive: true, force: true })
}
