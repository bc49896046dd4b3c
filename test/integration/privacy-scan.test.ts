// The privacy scan: a real broker logging at debug, a person added with a distinctive external id, name and e-mail,
// their tracker streaming readings that raise an alert, a race with a leaderboard, consent changes, a delta sync;
// then every text, json and bytea column of every table, every log line and every MQTT message is searched for the
// external id, the name and the e-mail. None may appear anywhere; the pseudonym must (so the scan sees the data).
import fs from 'node:fs'
import path from 'node:path'
import { Writable } from 'node:stream'
import type { MqttClient } from 'mqtt'
import { pino } from 'pino'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { loadConfig } from '../../broker.config.js'
import { startPulsegate } from '../../src/broker.js'
import { initPki, pkiPaths } from '../../src/identity/pki.js'
import {
  connectDevice,
  connectWithToken,
  createTestDatabase,
  nextMessage,
  provisionDevice,
  type StoreKind,
  type TestBroker,
  tempDir,
  token,
  waitFor,
} from '../helpers/harness.js'

const EXTERNAL_ID = 'ext-Zanzibar-7731-acct'
const NAME = 'Quillon Vexmoor-Dashwood'
const EMAIL = 'quillon.vexmoor@scan-example.org'
/** Each of these, case-insensitively, must appear nowhere; the parts catch a value cut or re-encoded. */
const NEEDLES = [EXTERNAL_ID, 'Zanzibar-7731', NAME, 'Vexmoor', 'Dashwood', EMAIL, 'quillon.vexmoor', 'scan-example']

function findNeedles(text: string): string[] {
  const t = text.toLowerCase()
  return NEEDLES.filter((n) => t.includes(n.toLowerCase()))
}

/** A broker as the harness starts it, but with every log line (debug and up) kept. */
async function startLoggedBroker(store: StoreKind, lines: string[]): Promise<TestBroker> {
  const dataDir = tempDir('pulsegate-scan-')
  const database = store === 'postgres' ? await createTestDatabase() : null
  await initPki(path.join(dataDir, 'pki'))
  const config = loadConfig(
    {
      dataDir,
      ...(database ? { databaseUrl: database.url } : {}),
      host: '127.0.0.1',
      mqttPort: 0,
      mqttsPort: 0,
      httpPort: 0,
      logLevel: 'debug',
      jwt: { secret: 'test-secret-0123456789abcdef' },
      shutdownSignals: false,
    },
    {},
  )
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      lines.push(...chunk.toString('utf8').split('\n').filter(Boolean))
      done()
    },
  })
  const instance = await startPulsegate(config, { log: pino({ level: 'debug' }, sink) })
  return {
    pg: instance,
    dataDir,
    store,
    dbUrl: database?.url ?? null,
    ca: fs.readFileSync(pkiPaths(path.join(dataDir, 'pki')).caCert),
    async stop() {
      await instance.stop()
      await database?.drop()
    },
  }
}

describe.each(['postgres', 'embedded'] as StoreKind[])('privacy scan (%s)', (store) => {
  const lines: string[] = []
  const messages: { topic: string; payload: string }[] = []
  let tb: TestBroker
  let tap: MqttClient
  let userId: string

  async function rpc(body: unknown): Promise<Record<string, unknown>> {
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    const json = (await res.json()) as Record<string, unknown>
    if (!res.ok) throw new Error(`rpc ${JSON.stringify(body)}: ${res.status} ${JSON.stringify(json)}`)
    return json
  }

  beforeAll(async () => {
    tb = await startLoggedBroker(store, lines)
    // Everything the broker publishes, as an admin tapping '#' sees it.
    tap = await connectWithToken(tb, await token(tb, 'ops', 'admin'), 'admin:ops:tap')
    tap.on('message', (topic, payload) => messages.push({ topic, payload: payload.toString('latin1') }))
    await tap.subscribeAsync('#', { qos: 1 })
  }, 60_000)
  afterAll(async () => {
    await tap?.endAsync(true)
    await tb?.stop()
  })

  it('no external id, name or e-mail in any table, log line or message after a day of use', async () => {
    const added = await rpc({
      op: 'addUser',
      externalId: EXTERNAL_ID,
      name: NAME,
      email: EMAIL,
      birthYear: 1980,
      timeZone: 'Europe/Berlin',
    })
    userId = added['userId'] as string
    expect(userId).toMatch(/^u[A-Za-z0-9_-]{22}$/)
    await rpc({ op: 'addUser', externalId: EXTERNAL_ID, email: EMAIL }) // again: same person, profile update
    await rpc({ op: 'setConsent', userId, purpose: 'medical_alerts', granted: true })
    await rpc({ op: 'setConsent', userId, purpose: 'research', granted: false })
    await rpc({
      op: 'createEvent',
      eventId: `scan-${store}`,
      distanceM: 10000,
      startsAt: new Date(Date.now() - 600_000).toISOString(),
    })
    await rpc({ op: 'joinEvent', eventId: `scan-${store}`, userId, consentLeaderboard: true })
    await rpc({ op: 'getConsent', userId })
    const dev = await provisionDevice(tb, `trk-scan-${store}`, userId)

    const app = await connectWithToken(tb, await token(tb, userId, 'app'), `app:${userId}:phone`, 'ws-header')
    await app.subscribeAsync([`users/${userId}/alerts`, `users/${userId}/sync/response`], { qos: 1 })
    // a refused subscription and a refused connection: both logged with what the broker knows of the client
    await app.subscribeAsync('users/someone-else/alerts', { qos: 1 }).catch(() => {})
    await connectWithToken(tb, 'not-a-token', `app:${userId}:bad`).then(
      (c) => c.endAsync(),
      () => {},
    )
    const alert = nextMessage(app, `users/${userId}/alerts`, 20_000)
    const tracker = await connectDevice(tb, dev)
    // A run (positions every 5 s, ~2.2 m/s, HR 150: distance for the leaderboard), then the runner stops and the
    // HR signal goes: a stopped_abnormal alert (race rules) to them and to the event's medics.
    const now = Date.now()
    const run: Record<string, number>[] = []
    for (let i = 0; i < 48; i++) {
      const t = now - 400_000 + i * 5000
      run.push({ t, lat: 52.52 + i * 0.0001, lon: 13.405, acc: 5 }, { t, hr: 150 })
    }
    await tracker.publishAsync(`devices/${dev.deviceId}/readings`, JSON.stringify({ seq: 1, samples: run }), { qos: 1 })
    const stop: Record<string, number>[] = [{ t: now - 150_000, hr: 160 }]
    for (let t = now - 120_000; t <= now; t += 5000) stop.push({ t, lat: 52.5248, lon: 13.405, acc: 5 })
    await tracker.publishAsync(`devices/${dev.deviceId}/readings`, JSON.stringify({ seq: 2, samples: stop }), {
      qos: 1,
    })
    expect(JSON.parse((await alert).payload.toString())).toMatchObject({ kind: 'stopped_abnormal', userId })
    await tracker.publishAsync(
      `devices/${dev.deviceId}/status`,
      JSON.stringify({ battery: 64, firmware: '2.0.1', buffered: 0 }),
      {
        qos: 1,
      },
    )
    await tracker.publishAsync(`devices/${dev.deviceId}/readings`, 'not a batch', { qos: 1 }) // a dead letter
    const synced = nextMessage(app, `users/${userId}/sync/response`, 10_000)
    await app.publishAsync(`users/${userId}/sync/request`, JSON.stringify({ requestId: 'scan', cursor: {} }), {
      qos: 1,
    })
    expect(JSON.parse((await synced).payload.toString())).toMatchObject({ requestId: 'scan' })
    await waitFor(() => messages.some((m) => m.topic === `events/scan-${store}/leaderboard`))
    await Promise.all([tracker.endAsync(), app.endAsync()])

    // Every table, every text-like/json/bytea column.
    const cols = await tb.pg.db.query<{
      table_schema: string
      table_name: string
      column_name: string
      data_type: string
    }>(
      `SELECT c.table_schema, c.table_name, c.column_name, c.data_type
         FROM information_schema.columns c
         JOIN information_schema.tables t USING (table_schema, table_name)
        WHERE t.table_type = 'BASE TABLE' AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
          AND (c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', 'bytea', 'ARRAY', 'name')
               OR c.udt_name IN ('citext'))`,
    )
    const scanned = new Set<string>()
    const hits: string[] = []
    let pseudonymRows = 0
    for (const c of cols.rows) {
      const q = (s: string) => `"${s.replaceAll('"', '""')}"`
      const res = await tb.pg.db.query<{ v: unknown }>(
        `SELECT ${q(c.column_name)} AS v FROM ${q(c.table_schema)}.${q(c.table_name)} WHERE ${q(c.column_name)} IS NOT NULL`,
      )
      scanned.add(`${c.table_name}.${c.column_name}`)
      for (const r of res.rows) {
        const texts =
          r.v instanceof Uint8Array
            ? [Buffer.from(r.v).toString('latin1'), Buffer.from(r.v).toString('utf8')]
            : [typeof r.v === 'string' ? r.v : JSON.stringify(r.v)]
        for (const t of texts) {
          for (const n of findNeedles(t)) hits.push(`${c.table_schema}.${c.table_name}.${c.column_name}: ${n}`)
          if (t.includes(userId)) pseudonymRows++
        }
      }
    }
    // The scan covered the tables that hold this person's data (and found the pseudonym there).
    for (const col of [
      'users.user_id',
      'people.name_enc',
      'people.email_enc',
      'alerts.evidence',
      'alerts.user_id',
      'consents.source',
      'participants.user_id',
      'devices.user_id',
      'privacy_keys.key_id',
      'audit_log.subject',
      'audit_log.details',
    ])
      expect(scanned, col).toContain(col)
    expect(pseudonymRows).toBeGreaterThan(5)
    // The audit trail names the person by pseudonym: their consent changes and their sync requests were recorded. The
    // sync request is audited beside its answer, not before it (both start once it is acked): wait for its row.
    const trail = await waitFor(async () => {
      const r = await tb.pg.db.query<{ action: string }>('SELECT action FROM audit_log WHERE subject = $1', [userId])
      const actions = r.rows.map((x) => x.action)
      return actions.includes('consent.change') && actions.includes('sync.request') ? actions : null
    })
    expect(trail).toEqual(expect.arrayContaining(['consent.change', 'sync.request']))
    expect(hits).toEqual([])

    // Every log line, debug included, and every message the broker published.
    for (const msg of ['pulsegate listening', 'subscribe refused', 'connection refused'])
      expect(
        lines.some((l) => l.includes(msg)),
        msg,
      ).toBe(true)
    expect(lines.some((l) => l.includes(userId))).toBe(true)
    expect(lines.flatMap((l) => findNeedles(l).map((n) => `log: ${n}: ${l.slice(0, 200)}`))).toEqual([])
    expect(messages.length).toBeGreaterThan(3)
    expect(messages.flatMap((m) => findNeedles(`${m.topic} ${m.payload}`).map((n) => `${m.topic}: ${n}`))).toEqual([])
    // The key files stay outside the database directory.
    // The keys live beside the database, never in it (the audit checkpoints' signing key pair too).
    expect(fs.readdirSync(path.join(tb.dataDir, 'keys')).sort()).toEqual(
      expect.arrayContaining(['audit-ed25519.pem', 'people.key', 'pseudonym.key']),
    )
  }, 90_000)
})
