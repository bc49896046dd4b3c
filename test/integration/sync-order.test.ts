// Delta sync by commit order (issue #14): one cursor over readings, alerts, recommendations and consent changes that
// converges — late uploads (sample times older than the cursor) arrive, and a transaction still running when a page
// was read is never skipped.
import crypto from 'node:crypto'
import type { MqttClient } from 'mqtt'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { syncResponseSchema, type SyncResponse } from '../../src/outputs/sync.js'
import { createLogger } from '../../src/log.js'
import { INSERT_SAMPLES } from '../../src/pipeline/commit.js'
import { migrate } from '../../src/store/migrate.js'
import {
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  PG_ADMIN_URL,
  provisionDevice,
  type StoreKind,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { grantRecommendations } from '../helpers/wellness.js'

const stores: StoreKind[] = ['postgres', 'embedded']

/** Pages from `cursor` until `more` is false: every row once, and the cursor after them. */
async function syncAll(
  app: MqttClient,
  userId: string,
  cursor: string,
  limit: number,
  responses: Map<string, unknown>,
): Promise<{ pages: SyncResponse[]; cursor: string }> {
  const pages: SyncResponse[] = []
  for (let i = 0; i < 1000; i++) {
    const requestId = crypto.randomUUID()
    await app.publishAsync(`users/${userId}/sync/request`, JSON.stringify({ requestId, cursor, limit }), { qos: 1 })
    const raw = await waitFor(() => responses.get(requestId), 15_000)
    const page = syncResponseSchema.parse(raw)
    pages.push(page)
    cursor = page.nextCursor
    if (!page.more) return { pages, cursor }
  }
  throw new Error('sync did not finish')
}

describe.each(stores)('delta sync by commit order on %s', (store) => {
  let tb: TestBroker
  let dev: DeviceCreds
  let device: MqttClient
  let app: MqttClient
  const responses = new Map<string, unknown>()
  let seq = 0
  const now = Date.now()

  const publish = (samples: unknown[]) =>
    device.publishAsync('devices/so-1/readings', JSON.stringify({ seq: ++seq, samples }), { qos: 1 })
  const stored = async () =>
    (
      await tb.pg.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.user_id = 'so-user'`,
      )
    ).rows[0]?.n ?? 0

  beforeAll(async () => {
    tb = await startTestBroker(store)
    dev = await provisionDevice(tb, 'so-1', 'so-user')
    device = await connectDevice(tb, dev)
    app = await connectWithToken(tb, await token(tb, 'so-user', 'app'), 'app:so-user:sync')
    app.on('message', (_t, p) => {
      const m = JSON.parse(p.toString()) as { requestId?: string }
      if (m.requestId) responses.set(m.requestId, m)
    })
    await app.subscribeAsync('users/so-user/sync/response', { qos: 1 })
  }, 120_000)
  afterAll(async () => {
    await device?.endAsync()
    await app?.endAsync()
    await tb?.stop()
  })

  it('a late upload (older sample times) arrives after a cursor that passed newer rows; pages never repeat', async () => {
    await publish(Array.from({ length: 30 }, (_, i) => ({ t: now - 60_000 + i * 1000, hr: 100 + i })))
    const first = await syncAll(app, 'so-user', '0', 7, responses)
    const firstIds = first.pages.flatMap((p) => (p.readings ?? []).map((r) => r.id))
    expect(first.pages.length).toBeGreaterThan(1)
    expect(new Set(firstIds).size).toBe(firstIds.length)
    expect(firstIds.length).toBe(await stored())

    // An offline buffer uploaded now: an hour older than anything the app has. A time cursor would skip it.
    await publish(Array.from({ length: 12 }, (_, i) => ({ t: now - 3600_000 + i * 1000, hr: 80, steps: i })))
    const second = await syncAll(app, 'so-user', first.cursor, 5, responses)
    const late = second.pages.flatMap((p) => p.readings ?? [])
    expect(late.length).toBe(24)
    expect(late.every((r) => r.t < now - 3000_000)).toBe(true)
    expect(new Set([...firstIds, ...late.map((r) => r.id)]).size).toBe(await stored())

    // Up to date: nothing more, and the cursor stays usable.
    const third = await syncAll(app, 'so-user', second.cursor, 5, responses)
    expect(third.pages.flatMap((p) => p.readings ?? [])).toEqual([])
  })

  it('the commit log is how readings are found: rows stored without it are found once migration 0019 logs them', async () => {
    const start = await syncAll(app, 'so-user', '0', 5000, responses)
    // A reading written as before the commit log: the row alone, no sample_commits row.
    await tb.pg.db.query(
      `INSERT INTO samples (time, device_key, metric, value)
       SELECT to_timestamp($1::float8 / 1000), device_key, 1, 77 FROM devices WHERE device_id = 'so-1'`,
      [now - 7_300_000],
    )
    const unlogged = await syncAll(app, 'so-user', start.cursor, 5000, responses)
    expect(unlogged.pages.flatMap((p) => p.readings ?? [])).toEqual([])
    // The migration's back-fill logs every stored row by its transaction; it runs again here as on an upgrade.
    await tb.pg.db.query(`DELETE FROM schema_migrations WHERE version = '0019_sample_commits.sql'`)
    expect((await migrate(tb.pg.db, createLogger('silent'))).applied).toEqual(['0019_sample_commits.sql'])
    const logged = await syncAll(app, 'so-user', start.cursor, 5000, responses)
    expect(logged.pages.flatMap((p) => p.readings ?? []).map((r) => [r.t, r.value])).toEqual([[now - 7_300_000, 77]])
    // Rows the pipeline had logged already are not logged twice: from the start, every stored row once.
    const ids = (await syncAll(app, 'so-user', '0', 5000, responses)).pages.flatMap((p) =>
      (p.readings ?? []).map((r) => r.id),
    )
    expect(new Set(ids).size).toBe(ids.length)
    expect(ids.length).toBe(await stored())
  })

  it('alerts (opened, then resolved), recommendations and consent changes come with the same cursor', async () => {
    const start = await syncAll(app, 'so-user', '0', 500, responses)
    const alertId = crypto.randomUUID()
    await tb.pg.db.query(
      `INSERT INTO alerts (id, user_id, device_id, kind, severity, opened_at, evidence)
       VALUES ($1, 'so-user', 'so-1', 'hr_high', 'warning', now(), '{}')`,
      [alertId],
    )
    await grantRecommendations(tb.pg.db, 'so-user')
    const a = await syncAll(app, 'so-user', start.cursor, 500, responses)
    expect(a.pages.flatMap((p) => p.alerts ?? []).map((x) => [x.id, x.state])).toEqual([[alertId, 'opened']])
    expect(a.pages.flatMap((p) => p.consents ?? []).map((c) => [c.purpose, c.granted])).toEqual([
      ['recommendations', true],
    ])
    await tb.pg.db.query('UPDATE alerts SET resolved_at = now() WHERE id = $1', [alertId])
    const b = await syncAll(app, 'so-user', a.cursor, 500, responses)
    expect(b.pages.flatMap((p) => p.alerts ?? []).map((x) => [x.id, x.state])).toEqual([[alertId, 'resolved']])
    expect(b.pages.flatMap((p) => p.consents ?? [])).toEqual([])
  })

  it('refuses a cursor it did not make, and rollups with a commit-order cursor, with a clear error', async () => {
    for (const [body, error] of [
      [{ cursor: 'c1.notbase64json' }, 'bad_cursor'],
      [{ cursor: 'yesterday' }, 'bad_cursor'],
      [{ cursor: '0', resolution: '1h' }, 'bad_request'],
    ] as const) {
      const requestId = crypto.randomUUID()
      await app.publishAsync('users/so-user/sync/request', JSON.stringify({ requestId, ...body }), { qos: 1 })
      expect(await waitFor(() => responses.get(requestId))).toMatchObject({ requestId, error })
    }
  })

  it.runIf(store === 'postgres')(
    'a transaction that took its id earlier but commits later is not passed over',
    async () => {
      const before = await syncAll(app, 'so-user', '0', 5000, responses)
      const slow = new pg.Client({ connectionString: tb.dbUrl! })
      await slow.connect()
      // A writing transaction in another database of the server holds an id too: it must not hold the horizon back.
      const neighbour = new pg.Client({ connectionString: PG_ADMIN_URL })
      await neighbour.connect()
      await neighbour.query('BEGIN')
      await neighbour.query('SELECT pg_current_xact_id()')
      try {
        const key = (await slow.query<{ k: number }>(`SELECT device_key AS k FROM devices WHERE device_id = 'so-1'`))
          .rows[0]!.k
        // The slow transaction takes its id first, then a batch commits (with a larger id) while it is still open.
        // It stores its reading as the pipeline does: the samples and their commit-log row (migration 0019).
        await slow.query('BEGIN')
        await slow.query(INSERT_SAMPLES, [[now - 2 * 3_600_000], [key], [1], [55]])
        await publish([{ t: now - 30_000 + 500, hr: 140 }])
        const mid = await syncAll(app, 'so-user', before.cursor, 5000, responses)
        // The batch is below no horizon yet: returning it would move the cursor past the open transaction's row.
        expect(mid.pages.flatMap((p) => p.readings ?? [])).toEqual([])
        await slow.query('COMMIT')
        const after = await syncAll(app, 'so-user', mid.cursor, 5000, responses)
        expect(
          after.pages
            .flatMap((p) => p.readings ?? [])
            .map((r) => r.value)
            .sort(),
        ).toEqual([140, 55])
        const all = [...before.pages, ...after.pages].flatMap((p) => (p.readings ?? []).map((r) => r.id))
        expect(new Set(all).size).toBe(all.length)
        expect(all.length).toBe(await stored())
      } finally {
        await slow.query('ROLLBACK').catch(() => {})
        await slow.end()
        await neighbour.query('ROLLBACK').catch(() => {})
        await neighbour.end()
      }
    },
  )
})
