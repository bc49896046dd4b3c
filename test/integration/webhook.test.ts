// Push for offline apps (src/outputs/webhook/): a real HTTPS endpoint started here with a certificate of the
// project's PKI, a real broker on PostgreSQL, real devices raising real alerts. Signature checked here with
// node:crypto, independently of the broker's code.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { initPki, pkiPaths } from '../../src/identity/pki.js'
import { listDeadLetters } from '../../src/outputs/webhook/store.js'
import { runCli } from '../helpers/cli.js'
import {
  connectDevice,
  connectWithToken,
  createTestDatabase,
  type DeviceCreds,
  nextMessage,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  tempDir,
  token,
  waitFor,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'
import { Receiver } from '../helpers/webhook-receiver.js'

const SECRET = 'webhook-secret-0123456789abcdef-0123456789'
const MAX_ATTEMPTS = 8

let dataDir: string
let database: { url: string; drop(): Promise<void> }
let receiver: Receiver
let tb: TestBroker
const devices = new Map<string, DeviceCreds>()
let seq = 1

async function startBroker(): Promise<TestBroker> {
  return startTestBroker(
    'postgres',
    {
      webhook: {
        url: `https://127.0.0.1:${receiver.port}/push`,
        secret: SECRET,
        caFile: pkiPaths(path.join(dataDir, 'pki')).caCert,
        timeoutMs: 3000,
        maxAttempts: MAX_ATTEMPTS,
        backoffBaseMs: 50,
        // Steps grow to 3 s: the down-then-up case has seconds, not ~1.5 s, between its second attempt and the last.
        backoffMaxMs: 3000,
        sweepMs: 200,
      },
    },
    { dataDir, dbUrl: database.url },
  )
}

const metrics = async (name: string, labels: Record<string, string>) =>
  metricValue(await tb.pg.metrics.registry.metrics(), name, labels)
const outcome = (o: string) => metrics('pulsegate_webhook_deliveries_total', { kind: 'alert', outcome: o })

async function device(user: string): Promise<DeviceCreds> {
  const known = devices.get(user)
  if (known) return known
  const d = await provisionDevice(tb, `trk-${user}`, user)
  devices.set(user, d)
  return d
}

/** 90 s of SpO2 87 % from the user's tracker (QoS 1: committed at the PUBACK): opens a spo2_low alert. */
async function lowSpo2(user: string, extraBatches = 0): Promise<void> {
  const c = await connectDevice(tb, await device(user))
  const now = Date.now()
  await c.publishAsync(
    `devices/trk-${user}/readings`,
    JSON.stringify({
      seq: seq++,
      samples: [0, 30_000, 60_000, 90_000].map((d) => ({ t: now - 95_000 + d, spo2: 87 })),
    }),
    { qos: 1 },
  )
  for (let i = 0; i < extraBatches; i++) {
    await c.publishAsync(
      `devices/trk-${user}/readings`,
      JSON.stringify({ seq: seq++, samples: [{ t: now - 4000 + i * 10, hr: 70 }] }),
      { qos: 1 },
    )
  }
  await c.endAsync()
}

async function alertId(user: string): Promise<string> {
  return waitFor(async () => {
    const r = await tb.pg.db.query<{ id: string }>(
      `SELECT id FROM alerts WHERE user_id = $1 AND kind = 'spo2_low' ORDER BY opened_at DESC LIMIT 1`,
      [user],
    )
    return r.rows[0]?.id
  }, 20_000)
}

async function rowsOf(user: string) {
  return (
    await tb.pg.db.query<{ state: string; attempts: number; last_error: string | null }>(
      'SELECT state, attempts, last_error FROM webhook_deliveries WHERE user_id = $1 ORDER BY created_at',
      [user],
    )
  ).rows
}

beforeAll(async () => {
  dataDir = tempDir()
  await initPki(path.join(dataDir, 'pki'))
  const p = pkiPaths(path.join(dataDir, 'pki'))
  receiver = new Receiver({ key: fs.readFileSync(p.serverKey), cert: fs.readFileSync(p.serverCert) })
  await receiver.up()
  database = await createTestDatabase()
  tb = await startBroker()
}, 60_000)

// A test that failed with the endpoint closed must not fail the ones after it.
afterEach(async () => {
  await receiver.up()
})

afterAll(async () => {
  await tb?.stop()
  await receiver?.down()
  await database?.drop()
})

describe('webhook output (push for offline apps)', () => {
  it('an alert of a user with no app connected is POSTed, signed over timestamp and body, pseudonyms only', async () => {
    await lowSpo2('alice')
    const id = await alertId('alice')
    const [got] = await waitFor(() => (receiver.of('alice').length > 0 ? receiver.of('alice') : null), 20_000)
    if (!got) throw new Error('no push')
    const ts = String(got.headers['x-pulsegate-timestamp'])
    expect(ts).toMatch(/^\d+$/)
    expect(Math.abs(Date.now() / 1000 - Number(ts))).toBeLessThan(600)
    const mac = crypto.createHmac('sha256', SECRET).update(`${ts}.${got.body}`).digest('hex')
    expect(got.headers['x-pulsegate-signature']).toBe(`sha256=${mac}`)
    // The timestamp is in the MAC: the same signature with another timestamp does not verify.
    const other = crypto
      .createHmac('sha256', SECRET)
      .update(`${Number(ts) + 1}.${got.body}`)
      .digest('hex')
    expect(other).not.toBe(mac)
    expect(got.headers['content-type']).toBe('application/json')
    expect(got.headers['x-pulsegate-delivery']).toBe(got.json.deliveryId)
    expect(got.json).toEqual({
      type: 'alert',
      deliveryId: expect.any(String),
      userId: 'alice',
      alert: {
        id,
        kind: 'spo2_low',
        severity: expect.any(String),
        state: 'opened',
        eventId: null,
        openedAt: expect.any(Number),
        resolvedAt: null,
        t: expect.any(Number),
      },
    })
    await waitFor(async () => (await rowsOf('alice'))[0]?.state === 'delivered')
    expect(await outcome('delivered')).toBeGreaterThanOrEqual(1)
    const text = await tb.pg.metrics.registry.metrics()
    expect(metricValue(text, 'pulsegate_webhook_delivery_seconds_count')).toBeGreaterThanOrEqual(1)
    expect(text).toMatch(/pulsegate_webhook_queue_depth\{node="/)
  })

  it('a user whose app is connected gets the MQTT message and no push; once it is gone, pushes resume', async () => {
    await device('bob')
    const app = await connectWithToken(tb, await token(tb, 'bob', 'app'), 'app:bob:phone')
    await app.subscribeAsync('users/bob/alerts', { qos: 1 })
    const skippedBefore = await outcome('skipped_app_connected')
    const msg = nextMessage(app, 'users/bob/alerts', 20_000)
    await lowSpo2('bob')
    expect(JSON.parse((await msg).payload.toString())).toMatchObject({ kind: 'spo2_low', state: 'opened' })
    // The skip is decided inside the publish that sent the message above: it is counted by now.
    expect(await outcome('skipped_app_connected')).toBe(skippedBefore + 1)
    expect(await rowsOf('bob')).toEqual([])
    expect(receiver.of('bob')).toEqual([])

    await app.endAsync()
    const presence = tb.pg.webhooks?.presence
    await waitFor(() => presence && !presence.connected('bob'))
    // SpO2 back to normal resolves the alert: that change is pushed.
    const c = await connectDevice(tb, await device('bob'))
    const now = Date.now()
    await c.publishAsync(
      'devices/trk-bob/readings',
      JSON.stringify({
        seq: seq++,
        samples: [
          { t: now - 2000, spo2: 98 },
          { t: now - 1000, spo2: 98 },
        ],
      }),
      { qos: 1 },
    )
    await c.endAsync()
    const pushes = await waitFor(() => (receiver.of('bob').length > 0 ? receiver.of('bob') : null), 20_000)
    expect(pushes[0]?.json.alert).toMatchObject({ kind: 'spo2_low', state: 'resolved' })
    // Its answer reached the broker (the next test closes the endpoint, which would cut an answer in flight).
    await waitFor(async () => (await rowsOf('bob'))[0]?.state === 'delivered')
  })

  it('endpoint down, then up: retried with backoff and delivered', async () => {
    await receiver.down()
    const before = await metrics('pulsegate_webhook_attempts_total', { result: 'network' })
    await lowSpo2('carol')
    // Carol's own row: the counter is shared with any other push the closed endpoint cut off.
    const row = await waitFor(async () => {
      const r = (await rowsOf('carol'))[0]
      return (r?.attempts ?? 0) >= 2 ? r : null
    })
    expect(receiver.of('carol')).toEqual([])
    // Up again at once, before the checks that query: the retries left must not run out while they are made.
    await receiver.up()
    expect(row.state).toBe('pending')
    expect(row.last_error).toMatch(/ECONNREFUSED/)
    expect(await metrics('pulsegate_webhook_attempts_total', { result: 'network' })).toBeGreaterThanOrEqual(before + 2)
    await waitFor(() => receiver.of('carol').length > 0, 20_000)
    await waitFor(async () => (await rowsOf('carol'))[0]?.state === 'delivered')
    const done = (await rowsOf('carol'))[0]
    expect(done?.attempts).toBeGreaterThanOrEqual(3)
    expect(done?.attempts).toBeLessThanOrEqual(MAX_ATTEMPTS)
    expect(await outcome('retried')).toBeGreaterThanOrEqual(2)
  })

  it('an app that connects while a push waits for its retry: the push is dropped, the app has the alert', async () => {
    receiver.behaviour.set('judy', 'hang') // each attempt lasts the 3 s timeout: the app connects long before the bound
    await lowSpo2('judy')
    await waitFor(async () => ((await rowsOf('judy'))[0]?.attempts ?? 0) >= 1, 20_000)
    const app = await connectWithToken(tb, await token(tb, 'judy', 'app'), 'app:judy:phone')
    await waitFor(async () => (await rowsOf('judy')).length === 0, 20_000)
    const tries = receiver.of('judy').length
    expect(tries).toBeGreaterThanOrEqual(1)
    expect(tries).toBeLessThan(MAX_ATTEMPTS)
    await app.endAsync()
  })

  it('a slow endpoint: readings keep being acknowledged and stored; the attempt times out and is retried', async () => {
    receiver.behaviour.set('dave', 'hang')
    const timeoutsBefore = await metrics('pulsegate_webhook_attempts_total', { result: 'timeout' })
    await lowSpo2('dave')
    await waitFor(() => receiver.of('dave').length >= 1, 20_000)
    // The push hangs; the tracker's QoS 1 batches are still acknowledged (each PUBACK follows its commit).
    await lowSpo2('dave', 25)
    const stored = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.device_id = 'trk-dave'`,
    )
    expect(stored.rows[0]?.n).toBeGreaterThanOrEqual(8 + 25)
    expect((await rowsOf('dave'))[0]?.state).toBe('pending')
    await waitFor(
      async () => (await metrics('pulsegate_webhook_attempts_total', { result: 'timeout' })) >= timeoutsBefore + 1,
      30_000,
    )
    receiver.behaviour.set('dave', 'ok')
    await waitFor(async () => (await rowsOf('dave'))[0]?.state === 'delivered', 30_000)
    expect(receiver.of('dave').length).toBeGreaterThanOrEqual(2)
    // At least once: every attempt carried the same delivery id, so the push service can dedupe.
    expect(new Set(receiver.of('dave').map((r) => r.json.deliveryId)).size).toBe(1)
  })

  it('persistent failure: dead-lettered after the bound, counted and listed', async () => {
    receiver.behaviour.set('erin', 503)
    const deadBefore = await outcome('dead_lettered')
    await lowSpo2('erin')
    await waitFor(async () => (await rowsOf('erin'))[0]?.state === 'dead', 30_000)
    // The counter moves just after the row (service.ts: the row, then the metric): wait for it, not for luck.
    await waitFor(async () => (await outcome('dead_lettered')) >= deadBefore + 1)
    const row = (await rowsOf('erin'))[0]
    expect(row?.attempts).toBe(MAX_ATTEMPTS)
    expect(row?.last_error).toBe('HTTP 503')
    expect(receiver.of('erin').length).toBeLessThanOrEqual(MAX_ATTEMPTS)
    expect(await outcome('dead_lettered')).toBe(deadBefore + 1)
    expect(await metrics('pulsegate_webhook_dead_letters', {})).toBeGreaterThanOrEqual(1)
    const listed = await listDeadLetters(tb.pg.db)
    expect(listed.rows.find((r) => r.userId === 'erin')).toMatchObject({ kind: 'alert', attempts: MAX_ATTEMPTS })

    // A refusal a retry would not change (410 Gone): dead at the first attempt.
    receiver.behaviour.set('hank', 410)
    await lowSpo2('hank')
    await waitFor(async () => (await rowsOf('hank'))[0]?.state === 'dead', 30_000)
    expect((await rowsOf('hank'))[0]?.attempts).toBe(1)

    process.env.PULSEGATE_DATABASE_URL = database.url
    process.env.PULSEGATE_DATA_DIR = dataDir
    process.env.PULSEGATE_LOG_LEVEL = 'silent'
    try {
      const cli = await runCli('webhooks', 'dead-letters')
      expect(cli.code).toBe(0)
      const out = JSON.parse(cli.out) as { total: number; rows: { userId: string }[] }
      expect(out.total).toBe(listed.total + 1)
      expect(out.rows.map((r) => r.userId)).toEqual(expect.arrayContaining(['erin', 'hank']))
      expect(cli.out).not.toContain('spo2_low') // no bodies on the console
    } finally {
      delete process.env.PULSEGATE_DATABASE_URL
      delete process.env.PULSEGATE_DATA_DIR
      delete process.env.PULSEGATE_LOG_LEVEL
    }
  })

  it('a user who withdrew medical_alerts gets no push', async () => {
    await device('frank')
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify({ op: 'setConsent', userId: 'frank', purpose: 'medical_alerts', granted: false }),
    })
    expect(res.status).toBe(200)
    const before = await outcome('withheld_consent')
    await lowSpo2('frank')
    await alertId('frank')
    await waitFor(async () => (await outcome('withheld_consent')) >= before + 1)
    expect(await rowsOf('frank')).toEqual([])
    expect(receiver.of('frank')).toEqual([])
  })

  it('a recommendation is pushed once per id (a redelivery is not pushed again), only with the consent', async () => {
    await device('ivy')
    const rec = (id: string) =>
      JSON.stringify({
        id,
        rule: 'move_reminder',
        version: 1,
        createdAt: new Date().toISOString(),
        expiresAt: new Date(Date.now() + 3600_000).toISOString(),
        priority: 'nudge',
        title: 'Time to move',
        message: 'You have been still for 55 minutes.',
        evidence: { stillMinutes: 55 },
        purpose: 'recommendations',
      })
    const recOutcome = (o: string) =>
      metrics('pulsegate_webhook_deliveries_total', { kind: 'recommendation', outcome: o })
    // Not granted (the default): withheld.
    const withheld = await recOutcome('withheld_consent')
    tb.pg.publish('users/ivy/recommendations', rec('rec-0'), 1, false)
    expect(await recOutcome('withheld_consent')).toBe(withheld + 1)
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify({ op: 'setConsent', userId: 'ivy', purpose: 'recommendations', granted: true }),
    })
    expect(res.status).toBe(200)
    tb.pg.publish('users/ivy/recommendations', rec('rec-1'), 1, false)
    await waitFor(() => receiver.of('ivy').length > 0, 20_000)
    await waitFor(async () => (await rowsOf('ivy'))[0]?.state === 'delivered')
    const duplicates = await recOutcome('duplicate')
    tb.pg.publish('users/ivy/recommendations', rec('rec-1'), 1, false)
    await waitFor(async () => (await recOutcome('duplicate')) >= duplicates + 1)
    expect(await rowsOf('ivy')).toHaveLength(1)
    // One delivery (a retry after a lost answer would repeat its id, at least once: the receiver dedupes by it).
    expect(new Set(receiver.of('ivy').map((r) => r.json.deliveryId)).size).toBe(1)
    expect(
      receiver
        .of('ivy')
        .map((r) => r.json)
        .slice(0, 1),
    ).toEqual([
      {
        type: 'recommendation',
        deliveryId: expect.any(String),
        userId: 'ivy',
        recommendation: {
          id: 'rec-1',
          rule: 'move_reminder',
          priority: 'nudge',
          title: 'Time to move',
          createdAt: expect.any(String),
          expiresAt: expect.any(String),
        },
      },
    ])
  })

  it('a restart does not lose a pending delivery', async () => {
    await receiver.down()
    await lowSpo2('gina')
    await waitFor(async () => ((await rowsOf('gina'))[0]?.attempts ?? 0) >= 1, 20_000)
    await tb.stop()
    await receiver.up()
    tb = await startBroker()
    await waitFor(() => receiver.of('gina').length > 0, 20_000)
    await waitFor(async () => (await rowsOf('gina'))[0]?.state === 'delivered')
    expect(receiver.of('gina')[0]?.json.alert).toMatchObject({ kind: 'spo2_low', state: 'opened' })
  }, 60_000)
})
