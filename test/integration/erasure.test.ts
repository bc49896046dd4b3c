// Erasure on both stores (issue #11 item 3): two people in one event, their trackers streaming over mTLS, alerts,
// dead letters, device status, consents, leaderboard (Redis on the PostgreSQL run), stored app sessions with queued
// alerts, retained messages. A is erased while A's tracker keeps publishing; afterwards no table or view holds a row
// of A, B's rows are all there, A's certificate, tokens, retained topics, board entries and queued messages are gone,
// and the erasure was recorded. Then the CLI runs it again (zeros) and erases B offline.
import crypto from 'node:crypto'
import type { Readable } from 'node:stream'
import { Redis } from 'ioredis'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ErasureReport } from '../../src/ops/erase.js'
import { ERASURE_PLAN, FINDER_COLUMNS, KEPT_TABLES } from '../../src/ops/erasure-plan.js'
import type { Db } from '../../src/store/db.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { createLogger } from '../../src/log.js'
import {
  connackCode,
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  provisionDevice,
  REDIS_URL,
  type StoreKind,
  type TestBroker,
  startTestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { runCli as run } from '../helpers/cli.js'

const SECRET = 'test-secret-0123456789abcdef'

/** Sets env variables for the CLI; returns the restore. */
function withEnv(vars: Record<string, string | undefined>): () => void {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  for (const [k, v] of Object.entries(vars)) {
    if (v === undefined) delete process.env[k]
    else process.env[k] = v
  }
  return () => {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  return Promise.race([
    p,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)
    }),
  ]).finally(() => clearTimeout(timer))
}

interface QueuedPacket {
  topic: string
  payload: Buffer
}
/** The broker's Aedes persistence (in memory), read as the erasure reads it. */
interface Persistence {
  createRetainedStreamCombi(patterns: string[]): Readable
  outgoingStream(client: { id: string }): Readable
  subscriptionsByClient(client: { id: string }): Promise<unknown[]>
}
async function collect<T>(s: Readable): Promise<T[]> {
  const out: T[] = []
  for await (const x of s) out.push(x as T)
  return out
}

interface Ids {
  userId: string
  keys: number[]
  deviceIds: string[]
}

const SKIP_SCHEMAS = `('pg_catalog', 'information_schema', '_timescaledb_catalog', '_timescaledb_config',
  'timescaledb_information', 'timescaledb_experimental', '_timescaledb_functions', '_timescaledb_debug')`

/**
 * Every table and view (chunks and materialisations included) with a user_id, device_key or device_id column, and
 * how many of its rows carry one of these ids.
 */
async function traces(db: Db, ids: Ids): Promise<Record<string, number>> {
  const cols = await db.query<{ schema: string; name: string; cols: string }>(
    `SELECT table_schema AS schema, table_name AS name, string_agg(column_name, ',') AS cols
     FROM information_schema.columns WHERE column_name IN ('user_id', 'device_key', 'device_id')
       AND table_schema NOT IN ${SKIP_SCHEMAS}
     GROUP BY 1, 2 ORDER BY 1, 2`,
  )
  const out: Record<string, number> = {}
  for (const t of cols.rows) {
    const params: unknown[] = []
    const where = t.cols
      .split(',')
      .map((c) => {
        params.push(c === 'user_id' ? ids.userId : c === 'device_key' ? ids.keys : ids.deviceIds)
        const type = c === 'user_id' ? 'text' : c === 'device_key' ? 'int[]' : 'text[]'
        return c === 'user_id' ? `user_id = $${params.length}::text` : `${c} = ANY($${params.length}::${type})`
      })
      .join(' OR ')
    const r = await db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM "${t.schema}"."${t.name}" WHERE ${where}`,
      params,
    )
    out[`${t.schema}.${t.name}`] = Number(r.rows[0]?.n)
  }
  return out
}

/** Text, JSON and binary columns of public tables (the audit log apart) whose value contains one of these strings. */
async function mentions(db: Db, needles: string[]): Promise<string[]> {
  const cols = await db.query<{ name: string; col: string; type: string }>(
    `SELECT c.table_name AS name, c.column_name AS col, c.data_type AS type FROM information_schema.columns c
     JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
     WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE' AND c.table_name <> 'audit_log'
       AND c.data_type IN ('text', 'jsonb', 'json', 'bytea', 'character varying')`,
  )
  const found: string[] = []
  for (const { name, col, type } of cols.rows) {
    for (const n of needles) {
      const hit =
        type === 'bytea' ? `position(convert_to($1, 'UTF8') in "${col}") > 0` : `strpos("${col}"::text, $1) > 0`
      const r = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM "${name}" WHERE ${hit}`, [n])
      if (Number(r.rows[0]?.n) > 0) found.push(`${name}.${col} ~ ${n}`)
    }
  }
  return found
}

const stores: StoreKind[] = ['postgres', 'embedded']

describe.each(stores)('erasure (%s)', (store) => {
  let tb: TestBroker
  const tag = crypto.randomBytes(3).toString('hex')
  const ev = `race${store[0]}${tag}`
  let A = ''
  let B = ''
  let devA: DeviceCreds
  let devB: DeviceCreds
  let cA: MqttClient
  let cB: MqttClient
  let liveA: MqttClient
  let oldTokenA = ''
  let redis: Redis | null = null
  const persistence = () => (tb.pg.broker as unknown as { persistence: Persistence }).persistence
  const retained = async (topic: string) => collect<QueuedPacket>(persistence().createRetainedStreamCombi([topic]))
  const queue = (id: string) => collect<QueuedPacket>(persistence().outgoingStream({ id }))
  const idsOf = (userId: string, dev: DeviceCreds): Promise<Ids> =>
    tb.pg.db
      .query<{ device_key: number }>('SELECT device_key FROM devices WHERE device_id = $1', [dev.deviceId])
      .then((r) => ({ userId, keys: r.rows.map((x) => Number(x.device_key)), deviceIds: [dev.deviceId] }))
  let idsA: Ids
  let idsB: Ids

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

  /** A minute of a runner: moving 3 m/s with HR 150, SpO2 87 % (an alert), in one QoS 1 batch. */
  function readings(seq: number, t0: number, lat0: number) {
    const samples: Record<string, number>[] = []
    for (let k = 0; k <= 12; k++) {
      samples.push({ t: t0 + k * 5000, lat: lat0 + (3 * k * 5) / 111_195, lon: 13.3, acc: 4 })
      samples.push({ t: t0 + k * 5000 + 1, hr: 150 })
    }
    for (const d of [0, 30_000, 60_000, 90_000]) samples.push({ t: t0 + d + 2, spo2: 87 })
    return JSON.stringify({ seq, samples })
  }

  beforeAll(async () => {
    tb = await startTestBroker(store, store === 'postgres' ? { redisUrl: REDIS_URL } : {})
    if (store === 'postgres') redis = new Redis(REDIS_URL)
    A = (await rpc({ op: 'addUser', externalId: `acct-a-${tag}`, name: 'Ada Erased', email: 'ada@example.org' }))
      .userId as string
    B = (await rpc({ op: 'addUser', externalId: `acct-b-${tag}`, name: 'Bo Kept', email: 'bo@example.org' }))
      .userId as string
    devA = await provisionDevice(tb, `trk-a-${tag}`, A)
    devB = await provisionDevice(tb, `trk-b-${tag}`, B)
    idsA = await idsOf(A, devA)
    idsB = await idsOf(B, devB)
    await tb.pg.registry.createEvent({ eventId: ev, distanceM: 42195, startsAt: new Date(Date.now() - 3600_000) })
    for (const u of [A, B]) {
      await tb.pg.registry.joinEvent(ev, u, { consentLeaderboard: true })
      await rpc({ op: 'setConsent', userId: u, purpose: 'research', granted: true })
    }

    // Stored sessions while their owners are away: A's app, and an operator watching everyone's alerts.
    oldTokenA = await token(tb, A, 'app')
    const appA = await connectWithToken(tb, oldTokenA, `app:${A}:persist`, 'tcp', { clean: false })
    await appA.subscribeAsync(`users/${A}/alerts`, { qos: 1 })
    await appA.endAsync()
    const ops = await connectWithToken(tb, await token(tb, 'ops', 'admin'), 'admin:ops:watch', 'tcp', { clean: false })
    await ops.subscribeAsync('users/+/alerts', { qos: 1 })
    // Retained messages an operator or a service left on the people's topics.
    for (const [u, d] of [
      [A, devA],
      [B, devB],
    ] as const) {
      await ops.publishAsync(`devices/${d.deviceId}/config`, JSON.stringify({ sampleMs: 1000 }), {
        qos: 1,
        retain: true,
      })
      await ops.publishAsync(`users/${u}/consent/state`, JSON.stringify({ userId: u, consents: {} }), {
        qos: 1,
        retain: true,
      })
    }
    await ops.endAsync()
    liveA = await connectWithToken(tb, oldTokenA, `app:${A}:phone`, 'ws-header')
    await liveA.subscribeAsync(`users/${A}/live`, { qos: 0 })

    cA = await connectDevice(tb, devA)
    cB = await connectDevice(tb, devB)
    const t0 = Date.now() - 120_000
    for (const [c, d, lat] of [
      [cA, devA, 52.4],
      [cB, devB, 52.5],
    ] as const) {
      const topic = `devices/${d.deviceId}/readings`
      await c.publishAsync(topic, readings(1, t0, lat), { qos: 1 })
      await c.publishAsync(`devices/${d.deviceId}/status`, JSON.stringify({ battery: 81 }), { qos: 1 })
      await c.publishAsync(topic, 'not a batch', { qos: 1 }) // whole batch refused: a dead letter
    }
    await waitFor(async () => {
      const r = await tb.pg.db.query<{ n: number }>(
        `SELECT count(DISTINCT user_id)::int AS n FROM alerts WHERE user_id = ANY($1) AND kind = 'spo2_low'`,
        [[A, B]],
      )
      return Number(r.rows[0]?.n) === 2
    }, 15_000)
    await waitFor(async () => (await tb.pg.leaderboard.ranks(ev, [A, B])).size === 2, 10_000)
    await waitFor(
      async () => (await retained(`users/${A}/live`)).length === 1 && (await retained(`users/${B}/live`)).length === 1,
    )
    await waitFor(async () => (await queue(`app:${A}:persist`)).length >= 1)
    await waitFor(async () => (await queue('admin:ops:watch')).length >= 2)

    if (tb.pg.timescale) {
      // History ten days old, compressed (segmented by device): the path that must not decompress.
      const old = Date.now() - 10 * 86400_000
      for (const k of [...idsA.keys, ...idsB.keys])
        await tb.pg.db.query(
          `INSERT INTO samples (time, device_key, metric, value)
           SELECT to_timestamp(($1::float8 + g * 1000) / 1000.0), $2, 1 + (g % 3), 60 + g % 50 FROM generate_series(0, 2999) g`,
          [old, k],
        )
      await tb.pg.db.query(`SELECT compress_chunk(c) FROM show_chunks('samples', older_than => interval '8 days') c`)
      await tb.pg.db.exec(`CALL refresh_continuous_aggregate('samples_1m', NULL, NULL)`)
      await tb.pg.db.exec(`CALL refresh_continuous_aggregate('samples_1h', NULL, NULL)`)
    }
  }, 180_000)

  afterAll(async () => {
    for (const c of [cA, cB, liveA]) await c?.endAsync(true).catch(() => {})
    await redis?.quit()
    await tb?.stop()
  })

  it('the plan covers every table with a user_id, device_key or device_id column', async () => {
    const planned = new Map(ERASURE_PLAN.map((e) => [e.table, e.by as readonly string[]]))
    expect(planned.size).toBe(ERASURE_PLAN.length)
    // TimescaleDB's own tables (chunks, compressed chunks, materialisations) are traced back to what they belong to.
    const internal = new Map<string, string>()
    if (tb.pg.timescale) {
      const chunks = await tb.pg.db.query<{ chunk: string; root: string }>(
        `SELECT c.schema_name || '.' || c.table_name AS chunk,
                coalesce(p.schema_name || '.' || p.table_name, h.schema_name || '.' || h.table_name) AS root
         FROM _timescaledb_catalog.chunk c JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
         LEFT JOIN _timescaledb_catalog.hypertable p ON p.compressed_hypertable_id = h.id
         UNION ALL
         SELECT h.schema_name || '.' || h.table_name, coalesce(p.schema_name || '.' || p.table_name, '')
         FROM _timescaledb_catalog.hypertable h LEFT JOIN _timescaledb_catalog.hypertable p
           ON p.compressed_hypertable_id = h.id`,
      )
      for (const r of chunks.rows) internal.set(r.chunk, r.root)
    }
    const caggs = new Set(
      tb.pg.timescale
        ? (
            await tb.pg.db.query<{ m: string }>(
              `SELECT materialization_hypertable_schema || '.' || materialization_hypertable_name AS m
               FROM timescaledb_information.continuous_aggregates`,
            )
          ).rows.map((r) => r.m)
        : [],
    )
    const cols = await tb.pg.db.query<{ schema: string; name: string; col: string }>(
      `SELECT c.table_schema AS schema, c.table_name AS name, c.column_name AS col FROM information_schema.columns c
       JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
       WHERE t.table_type = 'BASE TABLE' AND c.column_name = ANY($1) AND c.table_schema NOT IN ${SKIP_SCHEMAS}`,
      [FINDER_COLUMNS],
    )
    expect(cols.rows.length).toBeGreaterThan(8)
    const uncovered = cols.rows.flatMap(({ schema, name, col }) => {
      let root = `${schema}.${name}`
      for (let i = 0; i < 3 && internal.get(root); i++) root = internal.get(root) as string
      if (caggs.has(root)) return [] // materialisations: erased by whatever finder columns they have
      const table = root.startsWith('public.') ? root.slice(7) : root
      if (KEPT_TABLES.has(table) || planned.get(table)?.includes(col)) return []
      return [`${schema}.${name}.${col} (${root})`]
    })
    expect(uncovered).toEqual([])
  })

  it("erases A while A's tracker keeps publishing: no row of A anywhere, all of B's kept, A refused from then on", async () => {
    const before = await traces(tb.pg.db, idsB)
    const beforeA = await traces(tb.pg.db, idsA)
    expect(Object.values(beforeA).reduce((a, b) => a + b, 0)).toBeGreaterThan(20)
    expect((await queue(`app:${A}:persist`)).length).toBeGreaterThanOrEqual(1)
    const opsQueue = await queue('admin:ops:watch')
    const aboutB = opsQueue.filter((p) => p.topic === `users/${B}/alerts`).length
    expect(opsQueue.some((p) => p.topic === `users/${A}/alerts`)).toBe(true)
    expect(aboutB).toBeGreaterThanOrEqual(1)
    if (redis) expect(await redis.zscore(`${tb.pg.config.cluster.prefix}:lb:{${ev}}:all`, A)).not.toBeNull()
    let compressedBefore: { table_name: string; status: number }[] = []
    if (tb.pg.timescale) {
      compressedBefore = (
        await tb.pg.db.query<{ table_name: string; status: number }>(
          `SELECT table_name, status FROM _timescaledb_catalog.chunk WHERE status & 1 = 1 ORDER BY table_name`,
        )
      ).rows
      expect(compressedBefore.length).toBeGreaterThan(0)
      expect(before['public.samples_1m']).toBeGreaterThan(0)
      expect(beforeA['public.samples_1h']).toBeGreaterThan(0)
    }

    // A's tracker streams on (QoS 1, several in flight) while the erasure runs.
    let streaming = true
    let seq = 10
    const acked: number[] = []
    const pump = setInterval(() => {
      if (!streaming || !cA.connected) return
      const s = seq++
      cA.publish(
        `devices/${devA.deviceId}/readings`,
        JSON.stringify({ seq: s, samples: [{ t: Date.now(), hr: 90 }] }),
        { qos: 1 },
        (err) => {
          if (!err) acked.push(s)
        },
      )
    }, 20)
    await waitFor(() => acked.length >= 3)
    const closedA = new Promise<void>((resolve) => cA.once('close', () => resolve()))
    const closedLive = new Promise<void>((resolve) => liveA.once('close', () => resolve()))
    let probe: { t: number; acked: boolean } | null = null
    const refusalsBefore = await refusals(tb)
    const report = await tb.pg.eraseUser(A, {
      actor: { role: 'admin', id: 'ops' },
      onStage: async (stage) => {
        if (stage !== 'refusing' || probe) return
        // The erasure has begun (nothing of A is accepted any more) and A's tracker is still connected.
        const p = { t: Date.now() + 7, acked: false }
        probe = p
        cA.publish(
          `devices/${devA.deviceId}/readings`,
          JSON.stringify({ seq: 9999, samples: [{ t: p.t, hr: 77 }] }),
          { qos: 1 },
          (err) => {
            if (!err) p.acked = true
          },
        )
        await within(closedA, 15_000, "A's tracker disconnected")
      },
    })
    streaming = false
    clearInterval(pump)
    await within(closedLive, 15_000, "A's app disconnected")
    expect(probe).not.toBeNull()
    expect((probe as unknown as { acked: boolean }).acked).toBe(false)
    expect(await refusals(tb)).toBeGreaterThan(refusalsBefore)

    // Nothing of A in any table or view, no mention of A's ids in any text column; B's rows all there.
    const afterA = await traces(tb.pg.db, idsA)
    expect(Object.entries(afterA).filter(([, n]) => n > 0)).toEqual([])
    expect(await mentions(tb.pg.db, [A, devA.deviceId])).toEqual([])
    expect(await traces(tb.pg.db, idsB)).toEqual(before)
    const tomb = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM consents WHERE source = 'erasure' AND user_id IS NULL`,
    )
    expect(Number(tomb.rows[0]?.n)).toBe(1)
    const fp = await tb.pg.db.query<{ device_id: string | null }>(
      'SELECT device_id FROM revoked_certs WHERE fingerprint = $1',
      [devA.fingerprint],
    )
    expect(fp.rows).toEqual([{ device_id: null }])
    if (tb.pg.timescale) {
      // The compressed chunks stayed compressed (no partial decompression) and kept B's history.
      const after = await tb.pg.db.query<{ table_name: string; status: number }>(
        `SELECT table_name, status FROM _timescaledb_catalog.chunk WHERE status & 1 = 1 ORDER BY table_name`,
      )
      expect(after.rows).toEqual(compressedBefore)
      const oldB = await tb.pg.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM samples WHERE device_key = $1 AND time < now() - interval '8 days'`,
        [idsB.keys[0]],
      )
      expect(Number(oldB.rows[0]?.n)).toBe(3000)
    }

    expect(report).toMatchObject({
      userId: A,
      found: true,
      certificates: 1,
      leaderboardEntries: 1,
      tables: { devices: 1, users: 1, people: 1, participants: 1, dead_letters: 1, device_status: 1 },
    })
    expect(report.tables.samples).toBeGreaterThan(20)
    expect(report.tables.positions).toBeGreaterThan(10)
    expect(report.tables.alerts).toBeGreaterThanOrEqual(1)
    expect(report.tables.consents).toBeGreaterThanOrEqual(2)
    // The recommendation engine's tables (migration 0008) are part of every erasure now, none skipped.
    expect(report.skipped).toEqual([])
    expect(report.tables).toHaveProperty('recommendations')
    expect(report.tables).toHaveProperty('daily_features')
    if (tb.pg.timescale) {
      expect(report.tables.samples).toBeGreaterThan(3000)
      expect(report.tables.samples_1m).toBe(beforeA['public.samples_1m'])
      expect(report.tables.samples_1h).toBe(beforeA['public.samples_1h'])
    }
    expect(report.live).toMatchObject({ persistentSessions: 1, retainedCleared: 3 })
    expect(report.live?.sessionsCut).toBeGreaterThanOrEqual(1)
    expect(report.live?.queuedMessages).toBeGreaterThanOrEqual(2)

    // Recorded in the hash-chained audit log, with counts and the pseudonym only; the chain still verifies.
    const rec = (
      await tb.pg.db.query<{
        actor_role: string
        actor_id: string | null
        subject: string
        purpose: string
        details: string
      }>("SELECT actor_role, actor_id, subject, purpose, details FROM audit_log WHERE action = 'erasure'")
    ).rows
    expect(rec).toHaveLength(1)
    expect(rec[0]).toMatchObject({ subject: A, purpose: 'erasure', actor_role: 'admin', actor_id: 'ops' })
    expect(JSON.stringify(rec[0])).not.toContain(devA.deviceId)
    expect((JSON.parse(rec[0]?.details ?? '{}') as { tables?: unknown }).tables).toMatchObject({
      samples: report.tables.samples,
    })
    expect(await rpc({ op: 'auditVerify' })).toMatchObject({ ok: true })

    // The certificate is refused at reconnect, and stays refused if the device is registered again with it.
    expect(await connackCode(connectDevice(tb, devA))).toBe(5)
    await tb.pg.registry.registerDevice({ deviceId: devA.deviceId, userId: `c${tag}`, fingerprint: devA.fingerprint })
    expect(await connackCode(connectDevice(tb, devA))).toBe(5)
    await tb.pg.db.query('DELETE FROM devices WHERE device_id = $1', [devA.deviceId])
    await tb.pg.db.query('DELETE FROM users WHERE user_id = $1', [`c${tag}`])

    // A's old token is refused; one issued after the erasure (the person signs up again) is not.
    expect(await connackCode(connectWithToken(tb, oldTokenA, `app:${A}:again`))).toBe(5)
    const startSec = Math.floor(Date.now() / 1000)
    await waitFor(() => Math.floor(Date.now() / 1000) > startSec)
    // The stored session is gone: no subscription, nothing queued.
    expect(await persistence().subscriptionsByClient({ id: `app:${A}:persist` })).toEqual([])
    expect(await queue(`app:${A}:persist`)).toEqual([])
    const fresh = await connectWithToken(tb, await token(tb, A, 'app'), `app:${A}:again`)
    const got: string[] = []
    fresh.on('message', (t) => got.push(t))

    // Retained topics of A are empty (B's kept); a subscriber gets no retained message before a marker.
    for (const t of [`users/${A}/live`, `users/${A}/consent/state`, `devices/${devA.deviceId}/config`])
      expect(await retained(t)).toEqual([])
    for (const t of [`users/${B}/live`, `users/${B}/consent/state`, `devices/${devB.deviceId}/config`])
      expect(await retained(t)).toHaveLength(1)
    await fresh.subscribeAsync([`users/${A}/live`, `users/${A}/consent/state`], { qos: 1 })
    const ops = await connectWithToken(tb, await token(tb, 'ops', 'admin'), 'admin:ops:marker')
    await ops.publishAsync(`users/${A}/live`, 'marker', { qos: 1 })
    await waitFor(() => got.length >= 1)
    expect(got).toEqual([`users/${A}/live`])
    await Promise.all([fresh.endAsync(), ops.endAsync()])

    // A's queued alerts are gone from the operator's stored session; B's are still there.
    const opsAfter = await queue('admin:ops:watch')
    expect(opsAfter.filter((p) => p.topic.includes(A))).toEqual([])
    expect(opsAfter.filter((p) => p.topic === `users/${B}/alerts`)).toHaveLength(aboutB)

    // Off the board (and out of Redis); the board is republished without A.
    expect([...(await tb.pg.leaderboard.ranks(ev, [A, B])).keys()]).toEqual([B])
    if (redis) {
      expect(await redis.zscore(`${tb.pg.config.cluster.prefix}:lb:{${ev}}:all`, A)).toBeNull()
      expect(await redis.zscore(`${tb.pg.config.cluster.prefix}:lb:{${ev}}:public`, A)).toBeNull()
      expect(await redis.zscore(`${tb.pg.config.cluster.prefix}:lb:{${ev}}:all`, B)).not.toBeNull()
    }
    await waitFor(async () => {
      const [board] = await retained(`events/${ev}/leaderboard`)
      const top = board ? (JSON.parse(board.payload.toString()) as { top: { userId: string }[] }).top : []
      return top.length === 1 && top[0]?.userId === B
    })
    expect(tb.pg.outputs.distanceOf(A)).toBeNull()
  })

  it('a second run finds nothing and reports zeros (through the CLI: live, and offline on PostgreSQL)', async () => {
    const restore = withEnv({
      PULSEGATE_DATA_DIR: tb.dataDir,
      PULSEGATE_DATABASE_URL: tb.dbUrl ?? undefined,
      PULSEGATE_REDIS_URL: store === 'postgres' ? REDIS_URL : undefined,
      PULSEGATE_CLUSTER_PREFIX: tb.pg.config.cluster.prefix,
      PULSEGATE_JWT_SECRET: SECRET,
      PULSEGATE_LOG_LEVEL: 'silent',
    })
    try {
      const runs: ErasureReport[] = []
      // Embedded: the broker owns the store, so the CLI goes through its /admin/rpc. PostgreSQL: offline, then named.
      const offline = await run('users', 'erase', A, '--yes')
      expect(offline.code).toBe(0)
      runs.push(JSON.parse(offline.out) as ErasureReport)
      if (store === 'postgres') {
        expect(runs[0]?.live).toBeNull()
        expect(offline.err).toMatch(/no broker was reached/)
        const named = await run('users', 'erase', A, '--yes', '--broker', `http://127.0.0.1:${tb.pg.ports.http}`)
        expect(named.code).toBe(0)
        runs.push(JSON.parse(named.out) as ErasureReport)
      }
      const live = runs[runs.length - 1] as ErasureReport
      expect(live.live).toEqual({ sessionsCut: 0, persistentSessions: 0, queuedMessages: 0, retainedCleared: 0 })
      for (const r of runs) {
        expect(r).toMatchObject({ userId: A, found: false, certificates: 0, leaderboardEntries: 0 })
        expect(Object.entries(r.tables).filter(([, n]) => n !== 0)).toEqual([])
        expect(Object.keys(r.tables)).toContain('samples')
      }
      const unknown = await run('users', 'erase', 'nobody-at-all', '--yes')
      expect(unknown.code).toBe(0)
      expect(JSON.parse(unknown.out)).toMatchObject({ found: false, certificates: 0 })
      const tomb = await tb.pg.db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM consents WHERE source = 'erasure'`,
      )
      expect(Number(tomb.rows[0]?.n)).toBe(1)
      expect((await run('users', 'erase', 'not valid!', '--yes')).code).toBe(2)
      expect((await run('users', 'erase', A, '--yes', '--broker', 'ftp://x')).code).toBe(2)
    } finally {
      restore()
    }
  })

  it('offline, the CLI erases B from the database alone (PostgreSQL: with the broker running; embedded: stopped)', async () => {
    await cB.endAsync()
    if (store === 'embedded') await tb.stop()
    const restore = withEnv({
      PULSEGATE_DATA_DIR: tb.dataDir,
      PULSEGATE_DATABASE_URL: tb.dbUrl ?? undefined,
      PULSEGATE_REDIS_URL: store === 'postgres' ? REDIS_URL : undefined,
      PULSEGATE_CLUSTER_PREFIX: tb.pg.config.cluster.prefix,
      PULSEGATE_JWT_SECRET: SECRET,
      PULSEGATE_LOG_LEVEL: 'silent',
    })
    try {
      const r = await run('users', 'erase', B, '--yes')
      expect(r.code).toBe(0)
      const report = JSON.parse(r.out) as ErasureReport
      expect(report).toMatchObject({ userId: B, found: true, live: null, certificates: 1 })
      expect(report.tables.samples).toBeGreaterThan(0)
      // On PostgreSQL the running broker hears the erasure at its commit (control plane, LISTEN/NOTIFY) and clears its
      // boards too: whichever of the two gets to the Redis entry first counts it, so the CLI reports 1 or 0. That it
      // is gone is what matters, checked right below.
      if (store === 'postgres') expect(report.leaderboardEntries).toBeLessThanOrEqual(1)
      else expect(report.leaderboardEntries).toBe(0)
      if (redis) expect(await redis.zscore(`${tb.pg.config.cluster.prefix}:lb:{${ev}}:all`, B)).toBeNull()
    } finally {
      restore()
    }
    const db = store === 'embedded' ? await openEmbedded(tb.dataDir, createLogger('silent')) : tb.pg.db
    try {
      const left = await traces(db, idsB)
      expect(Object.entries(left).filter(([, n]) => n > 0)).toEqual([])
      expect(await mentions(db, [B, devB.deviceId])).toEqual([])
      const tomb = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM consents WHERE source = 'erasure'`)
      expect(Number(tomb.rows[0]?.n)).toBe(2)
    } finally {
      if (db !== tb.pg.db) await db.close()
    }
  })
})

async function refusals(tb: TestBroker): Promise<number> {
  const m = tb.pg.metrics.registry.getSingleMetric('pulsegate_erasure_refusals_total')
  const v = await m?.get()
  return (v?.values ?? []).reduce((a, x) => a + x.value, 0)
}
