// Public live streams over Server-Sent Events (/live/…): real curl (-N) and Chromium's EventSource against a real
// broker fed by real devices over mTLS. Every wait is for a condition, with a bound.
import crypto from 'node:crypto'
import http from 'node:http'
import type { MqttClient } from 'mqtt'
import puppeteer, { type Browser } from 'puppeteer-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { LeaderboardMessage } from '../../src/outputs/payloads.js'
import type { RunnerLiveMessage } from '../../src/outputs/sse/sources.js'
import {
  connectDevice,
  type DeviceCreds,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'
import { type CurlStream, curlSse, SseParser } from '../helpers/sse.js'

const tag = crypto.randomBytes(4).toString('hex')
const PUB = `pub-${tag}`
const PRIV = `priv-${tag}`
const START = { lat: 52.4, lon: 13.3 }
/** metres per degree of latitude */
const M_PER_DEG = 111_195

/** What the Chromium test uses of the page's globals. */
interface BrowserGlobal {
  got: { id: string; data: string }[]
  EventSource: new (
    url: string,
  ) => { addEventListener(type: string, f: (e: { lastEventId: string; data: string }) => void): void }
}

function metersFrom(lat: number, lon: number): number {
  const dy = (lat - START.lat) * M_PER_DEG
  const dx = (lon - START.lon) * M_PER_DEG * Math.cos((START.lat * Math.PI) / 180)
  return Math.hypot(dx, dy)
}

describe('live streams over SSE', () => {
  let tb: TestBroker
  let base: string
  const creds: DeviceCreds[] = []
  const devs: MqttClient[] = []
  const curls: CurlStream[] = []
  let browser: Browser | null = null
  /** the swarm's clock: one step (1 s of sample time, 3 m, 2 m, 4 m) per round, across every swarm of the file */
  let step = 0
  const t0 = Date.now() - 30 * 60_000
  const speeds = [3, 2, 4]

  async function rpc(body: unknown): Promise<unknown> {
    const res = await fetch(`${base}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    if (!res.ok) throw new Error(`rpc ${JSON.stringify(body)}: ${res.status} ${await res.text()}`)
    return res.json()
  }

  /** The devices run, one committed batch per round each, until `done` says so (bounded). */
  async function swarm(done: () => boolean | Promise<boolean>, maxRounds = 600): Promise<void> {
    for (let round = 0; round < maxRounds && !(await done()); round++) {
      const k = step++
      await Promise.all(
        devs.map((d, i) =>
          d.publishAsync(
            `devices/${creds[i]?.deviceId}/readings`,
            JSON.stringify({
              seq: k,
              samples: [
                { t: t0 + k * 1000, lat: START.lat + ((speeds[i] ?? 3) * k) / M_PER_DEG, lon: START.lon, acc: 4 },
                { t: t0 + k * 1000 + 1, hr: 150 },
              ],
            }),
            { qos: 1 },
          ),
        ),
      )
    }
    if (!(await done())) throw new Error('swarm: condition not reached')
  }

  function curl(path: string, headers: Record<string, string> = {}): CurlStream {
    const c = curlSse(`${base}${path}`, headers)
    curls.push(c)
    return c
  }

  beforeAll(async () => {
    tb = await startTestBroker('postgres', { live: { heartbeatMs: 500 }, dp: { intervalMs: 1000 } })
    base = `http://127.0.0.1:${tb.pg.ports.http}`
    await tb.pg.registry.createEvent({ eventId: PUB, isPublic: true, startsAt: new Date(Date.now() - 3600_000) })
    await tb.pg.registry.createEvent({ eventId: PRIV, isPublic: false, startsAt: new Date(Date.now() - 3600_000) })
    for (let i = 0; i < 3; i++) {
      const c = await provisionDevice(tb, `sse-trk-${i}`, `sse-run-${i}`)
      await tb.pg.registry.joinEvent(PUB, c.userId, { consentLeaderboard: true, bib: `10${i}` })
      creds.push(c)
    }
    await tb.pg.registry.joinEvent(PRIV, 'sse-priv-runner', { consentLeaderboard: true, bib: '7' })
    // Runner 0 shares live, with a privacy zone around the start; runner 1 does not share.
    await rpc({ op: 'setConsent', userId: 'sse-run-0', purpose: 'live_sharing', granted: true })
    await rpc({ op: 'setZone', userId: 'sse-run-0', zoneId: 'home', lat: START.lat, lon: START.lon, radiusM: 60 })
    for (const c of creds) devs.push(await connectDevice(tb, c))
  }, 60_000)

  afterAll(async () => {
    for (const c of curls) c.stop()
    await browser?.close()
    for (const d of devs) await d.endAsync().catch(() => {})
    await tb?.stop()
  })

  it('curl -N receives the public board as it changes; ids rise; Last-Event-ID resumes', async () => {
    const c = curl(`/live/events/${PUB}/leaderboard`)
    await swarm(() => c.events.length >= 3)
    expect(c.status).toBe(200)
    expect(c.headers['content-type']).toMatch(/^text\/event-stream/)
    expect(c.headers['access-control-allow-origin']).toBe('*')
    const ids = c.events.map((e) => Number(e.id))
    for (let i = 1; i < ids.length; i++) expect(ids[i]).toBeGreaterThan(ids[i - 1] as number)
    const boards = c.events.map((e) => JSON.parse(e.data) as LeaderboardMessage)
    expect(c.events.every((e) => e.event === 'leaderboard')).toBe(true)
    expect(boards.at(-1)?.eventId).toBe(PUB)
    expect(boards.at(-1)?.top.length).toBeGreaterThan(0)

    // Resume from an older id: the current state once, at once (without a new update).
    const lastId = c.events.at(-1)?.id ?? ''
    const stale = curl(`/live/events/${PUB}/leaderboard`, { 'Last-Event-ID': String(ids[0]) })
    await waitFor(() => stale.events.length >= 1)
    expect(Number(stale.events[0]?.id)).toBeGreaterThanOrEqual(Number(lastId))
    // Resume with the newest id (the first curl keeps the stream open, so ids are the same): nothing is re-sent, the
    // first event is the next state.
    const current = c.events.at(-1)?.id ?? ''
    const fresh = curl(`/live/events/${PUB}/leaderboard`, { 'Last-Event-ID': current })
    await waitFor(() => fresh.status === 200)
    const seen = c.events.length
    await swarm(() => c.events.length > seen && fresh.events.length >= 1)
    expect(Number(fresh.events[0]?.id)).toBeGreaterThan(Number(current))
    // Heartbeats (comments) keep idle streams open.
    await waitFor(() => fresh.parser.comments >= 1)
  }, 90_000)

  it('a consenting runner: progress only, positions outside their zone; others 404; withdrawal ends the stream', async () => {
    const none = await fetch(`${base}/live/events/${PUB}/runners/101`)
    expect(none.status).toBe(404) // runner 1 does not share live
    expect((await fetch(`${base}/live/events/${PUB}/runners/999`)).status).toBe(404)
    const r = curl(`/live/events/${PUB}/runners/100`)
    const withPosition = () =>
      r.events.map((e) => JSON.parse(e.data) as RunnerLiveMessage).filter((m) => m.position !== null).length
    await swarm(() => withPosition() >= 2)
    const msgs = r.events.map((e) => JSON.parse(e.data) as RunnerLiveMessage)
    for (const m of msgs) {
      expect(Object.keys(m).sort()).toEqual(
        ['bib', 'distanceM', 'eventId', 'paceSPerKm', 'position', 'rank', 'sampleT', 't'].sort(),
      )
      expect(m.bib).toBe('100')
      expect(JSON.stringify(m)).not.toMatch(/hr|zone|userId|sse-run/)
      if (m.position) expect(metersFrom(m.position.lat, m.position.lon)).toBeGreaterThan(60)
    }
    expect(msgs.some((m) => (m.distanceM ?? 0) > 0)).toBe(true)

    await rpc({ op: 'setConsent', userId: 'sse-run-0', purpose: 'live_sharing', granted: false })
    // The broker ends the response: curl sees the end of the stream and exits.
    await waitFor(() => r.done, 30_000)
    expect((await fetch(`${base}/live/events/${PUB}/runners/100`)).status).toBe(404)
    const m = await (await fetch(`${base}/metrics`)).text()
    expect(metricValue(m, 'pulsegate_sse_ended_total', { reason: 'consent' })).toBeGreaterThanOrEqual(1)
  }, 90_000)

  it('a private event: 401 without a token, 403 with a token that may not see it, 200 for its medic', async () => {
    const path = `/live/events/${PRIV}/leaderboard`
    expect((await fetch(`${base}${path}`)).status).toBe(401)
    expect((await fetch(`${base}${path}.json`)).status).toBe(401)
    expect((await fetch(`${base}/live/events/${PRIV}/runners/7`)).status).toBe(401)
    const stranger = await token(tb, 'stranger', 'app')
    expect((await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${stranger}` } })).status).toBe(403)
    const medic = await token(tb, 'doc', 'medic', [PRIV])
    const c = curl(path, { authorization: `Bearer ${medic}` })
    await waitFor(() => c.status !== null)
    expect(c.status).toBe(200)
    expect(c.headers['access-control-allow-origin']).toBeUndefined()
    const m = await (await fetch(`${base}/metrics`)).text()
    expect(metricValue(m, 'pulsegate_sse_refused_total', { reason: 'unauthorized' })).toBeGreaterThanOrEqual(3)
  })

  it('the JSON snapshot has an ETag and a one-second cache; If-None-Match gives 304', async () => {
    const url = `${base}/live/events/${PUB}/leaderboard.json`
    const first = await fetch(url)
    expect(first.status).toBe(200)
    const etag = first.headers.get('etag')
    expect(etag).toMatch(/^".+"$/)
    expect(first.headers.get('cache-control')).toBe('public, max-age=1')
    const body = (await first.json()) as LeaderboardMessage
    expect(body.eventId).toBe(PUB)
    const again = await fetch(url, { headers: { 'if-none-match': etag ?? '' } })
    expect(again.status).toBe(304)
    expect(await again.text()).toBe('')
    expect((await fetch(url, { headers: { 'if-none-match': '"other"' } })).status).toBe(200)
  })

  it('a burst of states is coalesced: at most one per second per stream, the newest last', async () => {
    const ev = `burst-${tag}`
    await tb.pg.registry.createEvent({ eventId: ev, isPublic: true })
    const topic = `events/${ev}/leaderboard`
    tb.pg.publish(topic, JSON.stringify({ eventId: ev, i: 0 }), 0, true)
    const c = curl(`/live/events/${ev}/leaderboard`)
    await waitFor(() => c.events.length >= 1)
    const started = Date.now()
    for (let i = 1; i <= 50; i++) tb.pg.publish(topic, JSON.stringify({ eventId: ev, i }), 0, true)
    await waitFor(() => c.events.some((e) => (JSON.parse(e.data) as { i: number }).i === 50))
    const elapsed = Date.now() - started
    const burst = c.events.slice(1)
    // One right away at most (the interval since the first state may be over), then one per full second.
    expect(burst.length).toBeLessThanOrEqual(2 + Math.floor(elapsed / 1000))
    expect(burst.length).toBeLessThan(50)
    expect((JSON.parse(burst.at(-1)?.data ?? '{}') as { i: number }).i).toBe(50)
  })

  it('the dp statistics stream carries the released statistics', async () => {
    const c = curl(`/live/events/${PUB}/stats`)
    await waitFor(() => c.events.length >= 1, 30_000)
    expect(c.events[0]?.event).toBe('stats')
    expect(JSON.parse(c.events[0]?.data ?? '{}')).toMatchObject({ eventId: PUB })
  }, 40_000)

  it("Chromium's EventSource receives board updates during a swarm", async () => {
    browser = await puppeteer.launch({
      executablePath: '/usr/bin/chromium',
      headless: true,
      args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
    })
    const page = await browser.newPage()
    await page.goto(`${base}/healthz`)
    // Runs in the page (this file is compiled without the DOM types).
    await page.evaluate((path) => {
      const w = globalThis as unknown as BrowserGlobal
      w.got = []
      const es = new w.EventSource(path)
      es.addEventListener('leaderboard', (e) => w.got.push({ id: e.lastEventId, data: e.data }))
    }, `/live/events/${PUB}/leaderboard`)
    const count = () => page.evaluate(() => (globalThis as unknown as BrowserGlobal).got.length)
    // The current board at once (or with the first change), then the changes as they come.
    await swarm(async () => (await count()) >= 1)
    const before = await count()
    await swarm(async () => (await count()) >= before + 2)
    const got = await page.evaluate(() => (globalThis as unknown as BrowserGlobal).got)
    for (let k = 1; k < got.length; k++) expect(Number(got[k]?.id)).toBeGreaterThan(Number(got[k - 1]?.id))
    expect((JSON.parse(got.at(-1)?.data ?? '{}') as LeaderboardMessage).eventId).toBe(PUB)
  }, 120_000)
  it("an erasure ends the person's runner stream (runs last: it cuts runner 2's device off)", async () => {
    await rpc({ op: 'setConsent', userId: 'sse-run-2', purpose: 'live_sharing', granted: true })
    const r = curl(`/live/events/${PUB}/runners/102`)
    await waitFor(() => r.status !== null)
    expect(r.status).toBe(200)
    await rpc({ op: 'eraseUser', userId: 'sse-run-2' })
    await waitFor(() => r.done, 30_000)
    const m = await (await fetch(`${base}/metrics`)).text()
    expect(metricValue(m, 'pulsegate_sse_ended_total', { reason: 'erasure' })).toBeGreaterThanOrEqual(1)
    expect((await fetch(`${base}/live/events/${PUB}/runners/102`)).status).toBe(404)
  }, 60_000)
})

describe('live streams: slow readers and capacity', () => {
  let tb: TestBroker
  let base: string
  const EV = `slow-${tag}`
  const MAX_QUEUED = 64 * 1024
  const PAYLOAD = 100 * 1024

  beforeAll(async () => {
    tb = await startTestBroker('postgres', { live: { minIntervalMs: 0, maxQueuedBytes: MAX_QUEUED, maxClients: 2 } })
    base = `http://127.0.0.1:${tb.pg.ports.http}`
    await tb.pg.registry.createEvent({ eventId: EV, isPublic: true })
  }, 60_000)
  afterAll(() => tb?.stop())

  const state = (i: number) => JSON.stringify({ eventId: EV, i, pad: 'x'.repeat(PAYLOAD) })
  const metric = async (name: string, labels: Record<string, string> = {}) =>
    metricValue(await (await fetch(`${base}/metrics`)).text(), name, labels)

  it('a paused reader skips to the newest state: server-side queued bytes stay bounded; the cap gives 503', async () => {
    tb.pg.publish(`events/${EV}/leaderboard`, state(0), 0, true)
    const parser = new SseParser()
    const got: number[] = []
    // A real HTTP client whose response is paused: Node stops reading its socket, so the broker's side backs up.
    const res = await new Promise<http.IncomingMessage>((resolve, reject) =>
      http.get(`${base}/live/events/${EV}/leaderboard`, { agent: false }, resolve).once('error', reject),
    )
    expect(res.statusCode).toBe(200)
    res.setEncoding('utf8')
    res.on('data', (chunk: string) => {
      for (const e of parser.feed(chunk)) got.push((JSON.parse(e.data) as { i: number }).i)
    })
    await waitFor(() => got.length >= 1)
    res.pause()

    // Many large updates while the reader is paused: the socket backs up, then states are skipped.
    let last = 0
    let maxQueued = 0
    for (let i = 1; i < 3000; i++) {
      tb.pg.publish(`events/${EV}/leaderboard`, state(i), 0, true)
      last = i
      if (i % 20 === 0) {
        maxQueued = Math.max(maxQueued, await metric('pulsegate_sse_queued_bytes_max'))
        if (i >= 400 && (await metric('pulsegate_sse_dropped_to_latest_total')) > 50) break
      }
    }
    expect(await metric('pulsegate_sse_dropped_to_latest_total', { kind: 'leaderboard' })).toBeGreaterThan(50)
    // Bounded: what is queued past the threshold is at most the one state written while under it (plus framing).
    expect(maxQueued).toBeLessThanOrEqual(MAX_QUEUED + PAYLOAD + 1024)
    expect(maxQueued).toBeGreaterThan(0)

    // The cap: the paused reader holds one of two places.
    const second = new AbortController()
    const ok = await fetch(`${base}/live/events/${EV}/leaderboard`, { signal: second.signal })
    expect(ok.status).toBe(200)
    const third = await fetch(`${base}/live/events/${EV}/leaderboard`)
    expect(third.status).toBe(503)
    expect(third.headers.get('retry-after')).toBeTruthy()
    second.abort()

    // Reading again: the reader catches up to the newest state, having skipped intermediate ones.
    res.resume()
    await waitFor(() => got.at(-1) === last, 30_000)
    expect(got.length).toBeLessThan(last)
    for (let k = 1; k < got.length; k++) expect(got[k]).toBeGreaterThan(got[k - 1] as number)
    res.destroy()
  }, 120_000)
})
