// The race-control console in a real browser (Debian's chromium via puppeteer-core) against a real broker on
// PostgreSQL with a short marathon swarm: the page connects with a medic token, draws the runners the positions feed
// lets it see (live_sharing granted: half of them) and the leaderboard, opens a runner's detail by delta sync, shows
// an injected alert and acknowledges it (database, audit log, events/{eid}/alerts), without a console error.
import fs from 'node:fs'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import puppeteer, { type Browser, type Page } from 'puppeteer-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runSwarm, type SwarmReport } from '../../simulators/swarm.js'
import { connectWithToken, startTestBroker, type TestBroker, token, waitFor } from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'

const EVENT = 'sim-marathon' // the swarm's marathon
const USERS = 24
const CHROMIUM = process.env.PULSEGATE_CHROMIUM ?? '/usr/bin/chromium'
const ARTIFACTS = path.resolve('test-artifacts')
/** The little of the page the functions run in it use (the test program is compiled without lib.dom; the casts
 *  vanish, the functions run in the page as written). */
interface Dom {
  document: {
    getElementById(id: string): { dataset: Record<string, string | undefined> } | null
    querySelectorAll(selector: string): Iterable<{ textContent: string | null }>
  }
  __console: { runners: Map<string, unknown> }
}
// Bounds for a loaded 2-core machine, never waits: every wait below is for a condition.
const LONG = 120_000

describe('race-control console in Chromium', () => {
  let tb: TestBroker
  let browser: Browser
  let page: Page
  let medic: string
  let tap: MqttClient
  const tapped: { topic: string; payload: Record<string, unknown> }[] = []
  const errors: string[] = []
  /** users who granted live_sharing: the only ones the map may show */
  const sharing = new Set<string>()
  let swarm: Promise<SwarmReport> | null = null

  const base = () => `http://127.0.0.1:${tb.pg.ports.http}`
  async function rpc(body: Record<string, unknown>): Promise<void> {
    const admin = await token(tb, 'ops', 'admin')
    const res = await fetch(`${base()}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    if (!res.ok) throw new Error(`rpc ${JSON.stringify(body)}: ${res.status} ${await res.text()}`)
  }

  beforeAll(async () => {
    tb = await startTestBroker('postgres')
    medic = await token(tb, 'doc1', 'medic', [EVENT], 3600)
    // An independent medic client: what the broker publishes on the event's alerts.
    tap = await connectWithToken(tb, await token(tb, 'doc2', 'medic', [EVENT], 3600), 'medic:doc2:tap')
    tap.on('message', (topic, payload) => tapped.push({ topic, payload: JSON.parse(payload.toString()) }))
    await tap.subscribeAsync(`events/${EVENT}/alerts`, { qos: 1 })

    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
      protocolTimeout: LONG,
    })
    page = await browser.newPage()
    page.setDefaultTimeout(LONG)
    await page.setViewport({ width: 1400, height: 900 })
    page.on('console', (m) => {
      if (m.type() === 'error') errors.push(`console: ${m.text()}`)
    })
    page.on('pageerror', (err) => errors.push(`pageerror: ${(err as Error).message}`))
    await page.goto(`${base()}/#token=${medic}&event=${EVENT}`, { waitUntil: 'load' })
    await page.waitForFunction(
      () => (globalThis as unknown as Dom).document.getElementById('conn')?.dataset.state === 'connected',
    )

    // The swarm runs while the page watches (positions are not retained). Half the runners share their live data,
    // granted once they exist (provisioning), well before most of their positions.
    swarm = runSwarm({
      broker: tb.pg,
      devices: USERS,
      durationS: 25,
      rampPerS: 50,
      anomalyShare: 0,
      bridgeShare: 0,
      appShare: 0,
      drainS: 60,
      offline: null,
      progress: false,
      onPhase: (phase) => {
        if (phase !== 'connecting') return
        for (let i = 1; i <= USERS; i += 2) {
          const userId = `sim-u${String(i).padStart(6, '0')}`
          sharing.add(userId)
          rpc({ op: 'setConsent', userId, purpose: 'live_sharing', granted: true }).catch((err: Error) =>
            errors.push(`grant: ${err.message}`),
          )
        }
      },
    })
  }, LONG)

  afterAll(async () => {
    if (page) {
      fs.mkdirSync(ARTIFACTS, { recursive: true })
      await page.screenshot({ path: path.join(ARTIFACTS, 'console-final.png') }).catch(() => undefined)
    }
    await browser?.close()
    await swarm?.catch(() => undefined)
    await tap?.endAsync()
    await tb?.stop()
  }, LONG)

  it(
    'draws the consenting runners on the map and fills the leaderboard',
    async () => {
      await page.waitForFunction(
        () => Number((globalThis as unknown as Dom).document.getElementById('map')?.dataset.drawn) >= 5,
        { timeout: LONG },
      )
      await page.waitForFunction(
        () => Number((globalThis as unknown as Dom).document.getElementById('board')?.dataset.rows) > 0,
        { timeout: LONG },
      )
      const shown = await page.evaluate(() => {
        const c = (globalThis as unknown as Dom).__console
        return {
          ids: [...c.runners.keys()],
          drawn: Number((globalThis as unknown as Dom).document.getElementById('map')?.dataset.drawn),
        }
      })
      // Auto-fit: every runner the page knows is on the canvas; and only runners who granted live_sharing.
      expect(shown.drawn).toBe(shown.ids.length)
      for (const id of shown.ids) expect(sharing.has(id), id).toBe(true)
    },
    LONG,
  )

  it(
    "opens a runner's detail by search and delta sync",
    async () => {
      const userId = await page.evaluate(() => {
        const c = (globalThis as unknown as Dom).__console
        return [...c.runners.keys()][0] as string
      })
      await page.type('#search', userId)
      // Wait for the list drawn from the whole query, not one drawn from a prefix while typing (that one is replaced).
      await page.waitForFunction(
        (u) => {
          const items = [...(globalThis as unknown as Dom).document.querySelectorAll('#matches li')]
          return (
            items.length > 0 &&
            items.every((li) => li.textContent?.includes(u)) &&
            items.some((li) => li.textContent === u)
          )
        },
        { timeout: LONG },
        userId,
      )
      await page.click(`#matches li[data-user="${userId}"]`)
      await page.waitForFunction(
        (u) => {
          const d = (globalThis as unknown as Dom).document.getElementById('detail')
          return d?.dataset.user === u && Number(d.dataset.readings) > 0
        },
        { timeout: LONG },
        userId,
      )
      // Once the swarm is done, the next delta holds every reading: the distance curve ends at the stored total of
      // the device it follows (distance rows are stretches between fixes, summed), and the pace curve has points.
      await swarm
      const stored = await tb.pg.db.query<{ m: number }>(
        `SELECT sum(s.value)::float8 AS m FROM samples s JOIN devices d USING (device_key)
          WHERE d.user_id = $1 AND s.metric = 7 GROUP BY d.device_key ORDER BY count(*) DESC LIMIT 1`,
        [userId],
      )
      const totalM = stored.rows[0]?.m ?? 0
      expect(totalM).toBeGreaterThan(10)
      await page.waitForFunction(
        (m) => {
          const d = (globalThis as unknown as Dom).document.getElementById('detail')
          return Math.abs(Number(d?.dataset.distanceKm) * 1000 - m) < 0.01 && Number(d?.dataset.pacePoints) > 0
        },
        { timeout: LONG },
        totalM,
      )
      const audited = await tb.pg.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM audit_log WHERE action = 'console.runner' AND subject = $1`,
        [userId],
      )
      expect(audited.rows[0]?.n).toBeGreaterThan(0)
    },
    LONG,
  )

  it(
    'shows an injected alert, pinned, and a medic acknowledges it (database, audit, events/{eid}/alerts)',
    async () => {
      const userId = [...sharing][0] as string
      const id = '7d0b8e3e-5a51-4c55-9c1d-1e2f3a4b5c6d'
      const openedAt = Date.now()
      // Where the runner is: the newest fix the swarm's tracker sent.
      const fix = await tb.pg.db.query<{ lat: number; lon: number }>(
        `SELECT p.lat, p.lon FROM positions p JOIN devices d USING (device_key)
          WHERE d.user_id = $1 ORDER BY p.time DESC LIMIT 1`,
        [userId],
      )
      const { lat, lon } = fix.rows[0] ?? { lat: 52.52, lon: 13.405 }
      const evidence = { t: openedAt, hr: 41, lat: Number(lat), lon: Number(lon) }
      // Injected as the engine does it (episodes.ts): persisted first, then published to the event's medics.
      await tb.pg.db.query(
        `INSERT INTO alerts (id, user_id, device_id, event_id, kind, severity, opened_at, evidence)
       VALUES ($1, $2, $3, $4, 'hr_low', 'critical', to_timestamp($5 / 1000.0), $6)`,
        [id, userId, `${userId}-w`, EVENT, openedAt, JSON.stringify(evidence)],
      )
      tb.pg.publish(
        `events/${EVENT}/alerts`,
        JSON.stringify({
          id,
          kind: 'hr_low',
          severity: 'critical',
          state: 'opened',
          userId,
          deviceId: `${userId}-w`,
          eventId: EVENT,
          openedAt,
          resolvedAt: null,
          evidence,
        }),
        1,
        false,
      )
      const item = `#alerts li[data-alert-id="${id}"]`
      await page.waitForSelector(`${item} button.ack`)
      await page.waitForFunction(
        () => Number((globalThis as unknown as Dom).document.getElementById('map')?.dataset.pins) >= 1,
      )
      await page.click(`${item} button.ack`)
      await page.waitForSelector(`${item}[data-acked="true"]`)
      fs.mkdirSync(ARTIFACTS, { recursive: true })
      await page.screenshot({ path: path.join(ARTIFACTS, 'console.png') })

      const rows = await tb.pg.db.query<{ action: string; actor_role: string; actor_id: string }>(
        'SELECT action, actor_role, actor_id FROM alert_actions WHERE alert_id = $1',
        [id],
      )
      expect(rows.rows).toEqual([{ action: 'acknowledge', actor_role: 'medic', actor_id: 'doc1' }])
      const audit = await tb.pg.db.query<{ actor_id: string; purpose: string }>(
        `SELECT actor_id, purpose FROM audit_log WHERE action = 'alert.acknowledge' AND subject = $1`,
        [userId],
      )
      expect(audit.rows).toEqual([{ actor_id: 'doc1', purpose: 'medical_alerts' }])
      const listed = await tb.pg.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM audit_log WHERE action = 'console.alerts' AND actor_id = 'doc1'`,
      )
      expect(listed.rows[0]?.n).toBeGreaterThan(0)
      const published = await waitFor(() =>
        tapped.find((m) => m.payload['id'] === id && (m.payload['action'] as { action?: string })?.action),
      )
      expect(published.topic).toBe(`events/${EVENT}/alerts`)
      expect(published.payload['action']).toMatchObject({ action: 'acknowledge', by: 'doc1' })
      expect(published.payload['acknowledged']).toMatchObject({ by: 'doc1' })

      // A second acknowledge is refused (409), a medic of another event and an app may not act at all.
      const post = async (jwt: string) =>
        (
          await fetch(`${base()}/console/api/alerts/${id}/acknowledge`, {
            method: 'POST',
            headers: { authorization: `Bearer ${jwt}` },
          })
        ).status
      expect(await post(medic)).toBe(409)
      expect(await post(await token(tb, 'doc9', 'medic', ['other-event']))).toBe(403)
      expect(await post(await token(tb, userId, 'app'))).toBe(403)
      const list = await fetch(`${base()}/console/api/alerts?event=${EVENT}`, {
        headers: { authorization: `Bearer ${await token(tb, 'doc9', 'medic', ['other-event'])}` },
      })
      expect(list.status).toBe(403)

      // Two medics resolve at once: one resolution, the other a 409; the page shows it closed.
      const resolve = async (jwt: string) =>
        (
          await fetch(`${base()}/console/api/alerts/${id}/resolve`, {
            method: 'POST',
            headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' },
            body: JSON.stringify({ note: 'on scene' }),
          })
        ).status
      const codes = await Promise.all([resolve(medic), resolve(await token(tb, 'doc3', 'medic', [EVENT]))])
      expect(codes.sort()).toEqual([200, 409])
      await page.waitForSelector(`${item}[data-closed="true"]`)
      const closed = await tb.pg.db.query<{ resolved: boolean; actions: number }>(
        `SELECT resolved_at IS NOT NULL AS resolved,
                (SELECT count(*)::int FROM alert_actions WHERE alert_id = $1) AS actions FROM alerts WHERE id = $1`,
        [id],
      )
      expect(closed.rows).toEqual([{ resolved: true, actions: 2 }])
      await waitFor(() =>
        tapped.find(
          (m) => m.payload['id'] === id && (m.payload['action'] as { action?: string })?.action === 'resolve',
        ),
      )
    },
    LONG,
  )

  it('the runner detail is refused for a runner who shares nothing and has no open alert', async () => {
    const hidden = [...Array(USERS).keys()]
      .map((i) => `sim-u${String(i + 1).padStart(6, '0')}`)
      .find((u) => !sharing.has(u))
    const res = await fetch(`${base()}/console/api/runner`, {
      method: 'POST',
      headers: { authorization: `Bearer ${medic}`, 'content-type': 'application/json' },
      body: JSON.stringify({ eventId: EVENT, userId: hidden }),
    })
    expect(res.status).toBe(404)
    // Bad input: a clear 400 and a metric.
    const bad = await fetch(`${base()}/console/api/runner`, {
      method: 'POST',
      headers: { authorization: `Bearer ${medic}`, 'content-type': 'application/json' },
      body: '{"eventId": "sim-marathon", "userId": "no spaces"',
    })
    expect(bad.status).toBe(400)
    expect(((await bad.json()) as { error: string }).error).toMatch(/invalid JSON/)
    const metrics = await (await fetch(`${base()}/metrics`)).text()
    expect(metricValue(metrics, 'pulsegate_console_requests_total', { route: 'runner', outcome: 'bad_request' })).toBe(
      1,
    )
    expect(metricValue(metrics, 'pulsegate_console_requests_total', { route: 'runner', outcome: 'not_visible' })).toBe(
      1,
    )
  })

  it(
    'reconnects after the broker drops it, and logged no console error',
    async () => {
      const clients = (tb.pg.broker as unknown as { clients: Record<string, { close(): void }> }).clients
      const ids = Object.keys(clients).filter((c) => c.startsWith('medic:doc1:console-'))
      expect(ids.length).toBe(1)
      clients[ids[0] as string]?.close()
      await page.waitForFunction(
        () => (globalThis as unknown as Dom).document.getElementById('conn')?.dataset.state !== 'connected',
      )
      await page.waitForFunction(
        () => (globalThis as unknown as Dom).document.getElementById('conn')?.dataset.state === 'connected',
        {
          timeout: LONG,
        },
      )
      expect(errors).toEqual([])
    },
    LONG,
  )
})
