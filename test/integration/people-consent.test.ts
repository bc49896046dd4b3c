// People and consent on both stores: pseudonymous users (keyed HMAC), names/e-mails only as ciphertext, versioned
// append-only consent history, the synchronous consent view, the app's consent payloads, the admin RPC of a running
// broker and the CLI. Real PostgreSQL, real embedded TimescaleDB (PGlite), real keys and ciphers.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { Registry as MetricsRegistry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AuditEntry } from '../../src/ops/audit-types.js'
import {
  type ConsentChange,
  ConsentPayloadError,
  ConsentService,
  eraseConsentRows,
  PURPOSES,
} from '../../src/ops/consent.js'
import { KeyError } from '../../src/ops/keys.js'
import { openPrivacyServices, type PrivacyServices } from '../../src/ops/privacy-services.js'
import { pseudonymFor } from '../../src/ops/pseudonym.js'
import { createLogger } from '../../src/log.js'
import { migrate, migrationsDir, statements } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { Registry } from '../../src/store/registry.js'
import {
  createTestDatabase,
  type StoreKind,
  type TestBroker,
  startTestBroker,
  tempDir,
  token,
} from '../helpers/harness.js'
import { runCli as run } from '../helpers/cli.js'

const SECRET = 'test-secret-0123456789abcdef'

const stores: StoreKind[] = ['postgres', 'embedded']

describe.each(stores)('people and consent (%s)', (store) => {
  let tb: TestBroker
  let p: PrivacyServices
  const audit: AuditEntry[] = []
  const cli = { role: 'cli' as const, id: null }

  async function rpc(body: unknown): Promise<{ status: number; body: Record<string, unknown> }> {
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(tb, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    return { status: res.status, body: (await res.json()) as Record<string, unknown> }
  }

  beforeAll(async () => {
    tb = await startTestBroker(store)
    p = await openPrivacyServices(tb.pg.config, tb.pg.db, { audit: { record: async (e) => void audit.push(e) } })
  }, 60_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('users add: the same external id gives the same id twice and updates the profile; another id another user', async () => {
    const first = await p.addUser({ externalId: 'acct-1001', birthYear: 1985, name: 'Ann Example' }, cli)
    expect(first.created).toBe(true)
    expect(first.userId).toBe(pseudonymFor(p.pseudonymKey, 'acct-1001'))
    const again = await p.addUser({ externalId: 'acct-1001', email: 'ann@example.org', timeZone: 'europe/berlin' }, cli)
    expect(again).toEqual({ userId: first.userId, created: false })
    expect(await p.people.get(first.userId)).toEqual({
      userId: first.userId,
      name: 'Ann Example',
      email: 'ann@example.org',
    })
    const u = await tb.pg.db.query<{ birth_year: number; time_zone: string }>(
      'SELECT birth_year, time_zone FROM users WHERE user_id = $1',
      [first.userId],
    )
    expect(u.rows[0]).toEqual({ birth_year: 1985, time_zone: 'Europe/Berlin' })
    const other = await p.addUser({ externalId: 'acct-1002' }, cli)
    expect(other.userId).not.toBe(first.userId)
    expect((await tb.pg.db.query('SELECT 1 FROM users WHERE user_id = $1', [other.userId])).rows).toHaveLength(1)
    // defaults: UTC, no people row when there is nothing to keep
    const tz = await tb.pg.db.query<{ time_zone: string }>('SELECT time_zone FROM users WHERE user_id = $1', [
      other.userId,
    ])
    expect(tz.rows[0]?.time_zone).toBe('UTC')
    expect(await p.people.get(other.userId)).toBeNull()
    await expect(p.addUser({ externalId: 'acct-1003', timeZone: 'Mars/Base' }, cli)).rejects.toThrow(/time zone/)
    // The audit entry says which fields were set, never their values or the external id.
    const added = audit.filter((a) => a.action === 'user.add' && a.subject === first.userId)
    expect(added.map((a) => a.details)).toEqual([
      { created: true, fields: ['birthYear', 'name'] },
      { created: false, fields: ['timeZone', 'email'] },
    ])
    expect(JSON.stringify(audit)).not.toMatch(/acct-100|Ann Example|ann@example/)
  })

  it('names and e-mails are stored only as ciphertext bound to their person', async () => {
    const { userId } = await p.addUser(
      { externalId: 'acct-cipher', name: 'Cyrilla Plaintextova', email: 'cyrilla@plain.example' },
      cli,
    )
    const rows = await tb.pg.db.query<{ name_enc: Uint8Array; email_enc: Uint8Array }>(
      'SELECT name_enc, email_enc FROM people WHERE user_id = $1',
      [userId],
    )
    const r = rows.rows[0]!
    for (const blob of [r.name_enc, r.email_enc]) {
      const b = Buffer.from(blob)
      for (const enc of ['latin1', 'utf8'] as const) {
        expect(b.toString(enc)).not.toMatch(/Plaintextova|cyrilla|plain\.example/i)
      }
      expect(b.subarray(1, 9).toString('hex')).toBe(p.peopleKey.id)
    }
    const cols = await tb.pg.db.query<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns WHERE table_name = 'people' ORDER BY column_name`,
    )
    expect(cols.rows.map((c) => c.column_name)).toEqual(['email_enc', 'name_enc', 'updated_at', 'user_id'])
    expect(await p.people.get(userId)).toMatchObject({ name: 'Cyrilla Plaintextova', email: 'cyrilla@plain.example' })
    // Moving a ciphertext to another person's row makes it unreadable, not someone else's name.
    const { userId: mallory } = await p.addUser({ externalId: 'acct-mallory', name: 'M' }, cli)
    await tb.pg.db.query('UPDATE people SET name_enc = $1 WHERE user_id = $2', [r.name_enc, mallory])
    await expect(p.people.get(mallory)).rejects.toThrow(/does not authenticate/)
  })

  it('a process holding another key is refused and writes nothing; another key would give unlinkable ids', async () => {
    const otherKey = crypto.randomBytes(32).toString('hex')
    const cfg = { ...tb.pg.config, privacy: { ...tb.pg.config.privacy, pseudonymKey: otherKey } }
    await expect(openPrivacyServices(cfg, tb.pg.db, { audit: { record: async () => {} } })).rejects.toThrow(KeyError)
    await expect(openPrivacyServices(cfg, tb.pg.db, { audit: { record: async () => {} } })).rejects.toThrow(
      /not the one this database was set up with/,
    )
    expect(pseudonymFor(Buffer.from(otherKey, 'hex'), 'acct-1001')).not.toBe(pseudonymFor(p.pseudonymKey, 'acct-1001'))
  })

  it('consent history: versions per purpose, sources, no row for a repeated state, audit and state', async () => {
    const { userId } = await p.addUser({ externalId: 'acct-consent' }, cli)
    const c = p.consent
    const admin = { role: 'admin' as const, id: 'ops' }
    const before = audit.length
    expect(await c.state(userId)).toEqual(
      // Never set: not granted, but medical alerts to an event's medics (vital interest; GRANTED_WHEN_UNSET).
      Object.fromEntries(
        PURPOSES.map((x) => [x, { granted: x === 'medical_alerts', version: 0, at: null, source: null }]),
      ),
    )
    await c.set(userId, 'research', true, 'cli', cli)
    await c.set(userId, 'research', true, 'cli', cli) // no change: no row, no audit
    await c.set(userId, 'research', false, 'rpc', admin)
    await c.set(userId, 'medical_alerts', true, 'rpc', admin)
    const st = await c.set(userId, 'research', true, 'app:alice:phone', { role: 'app', id: userId })
    expect(st.research).toMatchObject({ granted: true, version: 3, source: 'app:alice:phone' })
    expect(st.medical_alerts).toMatchObject({ granted: true, version: 1, source: 'rpc' })
    expect(st.leaderboard).toEqual({ granted: false, version: 0, at: null, source: null })
    const h = await c.history(userId)
    expect(h.map((x) => [x.purpose, x.granted, x.version, x.source])).toEqual([
      ['research', true, 1, 'cli'],
      ['research', false, 2, 'rpc'],
      ['medical_alerts', true, 1, 'rpc'],
      ['research', true, 3, 'app:alice:phone'],
    ])
    const entries = audit.slice(before)
    expect(entries).toHaveLength(4)
    expect(entries[1]).toEqual({
      actor: admin,
      action: 'consent.change',
      subject: userId,
      purpose: 'research',
      details: { granted: false, version: 2, source: 'rpc' },
    })
    await expect(c.set('nobody-here', 'research', true, 'cli', cli)).rejects.toThrow(/unknown user nobody-here/)
    await expect(c.set(userId, 'marketing' as never, true, 'cli', cli)).rejects.toThrow(/unknown purpose/)
  })

  it('allows() follows a change within the same tick; listeners see it already applied; bulk load fails closed before', async () => {
    const { userId } = await p.addUser({ externalId: 'acct-tick' }, cli)
    // A second service, as the output engine would hold: nothing loaded yet → not allowed (fail closed).
    const engineView = new ConsentService(tb.pg.db, { record: async () => {} })
    await p.consent.set(userId, 'live_sharing', true, 'cli', cli)
    expect(engineView.allows(userId, 'live_sharing')).toBe(false)
    await engineView.load([userId, 'never-seen'])
    expect(engineView.allows(userId, 'live_sharing')).toBe(true)
    expect(engineView.isLoaded('never-seen')).toBe(true)

    const seen: [ConsentChange, boolean][] = []
    const off = engineView.onChange((ch) => seen.push([ch, engineView.allows(ch.userId, ch.purpose)]))
    await engineView.set(userId, 'live_sharing', false, 'rpc', { role: 'admin', id: 'ops' })
    expect(engineView.allows(userId, 'live_sharing')).toBe(false)
    expect(seen).toEqual([
      [expect.objectContaining({ userId, purpose: 'live_sharing', granted: false, version: 2, source: 'rpc' }), false],
    ])
    off()
    // Another process's cache learns of the change when it loads the user again (the cluster control plane's job).
    expect(p.consent.allows(userId, 'live_sharing')).toBe(true)
    await p.consent.load([userId])
    expect(p.consent.allows(userId, 'live_sharing')).toBe(false)
  })

  it('leaderboard: the per-event opt-in from event join, unless the user-level purpose is withdrawn', async () => {
    const { userId: runner } = await p.addUser({ externalId: 'acct-runner' }, cli)
    const { userId: shy } = await p.addUser({ externalId: 'acct-shy' }, cli)
    await tb.pg.registry.createEvent({ eventId: `lb-${store}` })
    await tb.pg.registry.joinEvent(`lb-${store}`, runner, { consentLeaderboard: true })
    await tb.pg.registry.joinEvent(`lb-${store}`, shy, { consentLeaderboard: false })
    const c = p.consent
    await c.load([runner, shy])
    expect(c.leaderboardVisible(runner, true)).toBe(true) // opted in at join, never withdrawn
    expect(c.allows(runner, 'leaderboard')).toBe(false) // the user-level purpose itself was never granted
    await c.set(shy, 'leaderboard', true, 'cli', cli)
    expect(c.leaderboardVisible(shy, false)).toBe(false) // a user-level grant does not opt in to this event
    await c.set(runner, 'leaderboard', false, 'rpc', { role: 'admin', id: 'ops' })
    expect(c.leaderboardVisible(runner, true)).toBe(false) // withdrawn: off every board
    expect(c.leaderboardVisible('not-loaded', true)).toBe(false)
    const h = await c.history(runner)
    expect(h.map((x) => [x.purpose, x.eventId, x.granted, x.version, x.source])).toEqual([
      ['leaderboard', `lb-${store}`, true, 1, `event-join:lb-${store}`],
      ['leaderboard', null, false, 1, 'rpc'],
    ])
    // changing the per-event consent appends version 2 of that event's opt-in
    await tb.pg.registry.joinEvent(`lb-${store}`, runner, { consentLeaderboard: false })
    expect((await c.history(runner)).at(-1)).toMatchObject({ eventId: `lb-${store}`, granted: false, version: 2 })
  })

  it('concurrent changes of one purpose from several processes get consecutive versions (none lost or repeated)', async () => {
    const { userId } = await p.addUser({ externalId: 'acct-race' }, cli)
    // Four writers as four processes would be: on PostgreSQL each with its own pool (three sets in flight each, so
    // they wait on each other in the database, not for a pool connection); the embedded store has one session.
    const dbs = Array.from({ length: 4 }, () =>
      tb.dbUrl ? openPostgres(tb.dbUrl, 3, createLogger('silent')) : tb.pg.db,
    )
    try {
      const writers = dbs.map((db) => new ConsentService(db, { record: async () => {} }))
      const results = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          (writers[i % 4] as ConsentService).set(userId, 'recommendations', i % 2 === 0, 'cli', cli),
        ),
      )
      const history = await p.consent.history(userId)
      expect(history.map((h) => h.version)).toEqual(Array.from({ length: history.length }, (_, i) => i + 1))
      // the time of each change follows its version (taken at the insert, not at the transaction's start)
      for (let i = 1; i < history.length; i++)
        expect(Date.parse(history[i]?.at ?? '')).toBeGreaterThanOrEqual(Date.parse(history[i - 1]?.at ?? ''))
      // consecutive rows always alternate: a repeated state appends nothing
      for (let i = 1; i < history.length; i++) expect(history[i]?.granted).not.toBe(history[i - 1]?.granted)
      // every writer's answer is a state that was current at some point
      for (const r of results) expect(r.recommendations.version).toBeLessThanOrEqual(history.length)
    } finally {
      if (tb.dbUrl) await Promise.all(dbs.map((db) => db.close()))
    }
  })

  it("the app's consent payloads: one purpose or several; a bad payload is refused clearly, counted, stores nothing", async () => {
    const { userId } = await p.addUser({ externalId: 'acct-app' }, cli)
    const c = p.consent
    const msg = await c.handleAppPublish(
      userId,
      Buffer.from('{"purpose":"research","granted":true}'),
      `app:${userId}:ph`,
    )
    expect(msg).toEqual({
      userId,
      consents: {
        leaderboard: false,
        live_sharing: false,
        medical_alerts: true, // on while never set (GRANTED_WHEN_UNSET)
        recommendations: false,
        research: true,
      },
      version: 1,
    })
    const msg2 = await c.handleAppPublish(
      userId,
      '{"consents":{"research":false,"medical_alerts":true,"live_sharing":true}}',
      `app:${userId}:ph`,
    )
    expect(msg2.consents).toMatchObject({ research: false, medical_alerts: true, live_sharing: true })
    expect(msg2.version).toBe(4)
    expect((await c.history(userId)).map((h) => h.source)).toEqual(Array(4).fill(`app:${userId}:ph`))
    const msg3 = await c.handleAppPublish(userId, '{"purpose":"medical_alerts","granted":false}', `app:${userId}:ph`)
    expect(msg3.consents.medical_alerts).toBe(false)
    expect(c.allows(userId, 'medical_alerts')).toBe(false)
    await c.handleAppPublish(userId, '{"purpose":"medical_alerts","granted":true}', `app:${userId}:ph`)

    const before = (await c.history(userId)).length
    const bad: [string, RegExp][] = [
      ['not json', /not JSON/],
      ['{"purpose":"marketing","granted":true}', /purpose: Invalid option.*leaderboard, live_sharing/],
      ['{"purpose":"research","granted":"yes"}', /granted: Invalid input: expected boolean/],
      ['{"consents":{"research":true,"marketing":true}}', /consents: Unrecognized key: "marketing"/],
      ['{"consents":{}}', /name at least one purpose/],
      ['{"purpose":"research","granted":true,"extra":1}', /Unrecognized key: "extra"/],
      ['[]', /consent payload refused/],
      [`{"purpose":"research","granted":true,"x":"${'a'.repeat(5000)}"}`, /larger than 4096 bytes/],
    ]
    for (const [payload, why] of bad) {
      const err = await c.handleAppPublish(userId, payload, `app:${userId}:ph`).catch((e: unknown) => e)
      expect(err, payload).toBeInstanceOf(ConsentPayloadError)
      expect((err as Error).message, payload).toMatch(why)
    }
    expect((await c.history(userId)).length).toBe(before)
    // An app whose user the registry has not met yet: its token proves the user, who is created bare.
    const fresh = `app-only-${store}`
    expect((await c.handleAppPublish(fresh, '{"purpose":"recommendations","granted":true}', 'app:x')).version).toBe(1)
  })

  it('refusals and changes are counted; a withdrawal holds even when the audit sink fails afterwards', async () => {
    const { userId } = await p.addUser({ externalId: 'acct-metrics' }, cli)
    const reg = new MetricsRegistry()
    const failing = new ConsentService(
      tb.pg.db,
      {
        record: async () => {
          throw new Error('audit log unavailable')
        },
      },
      { metrics: reg },
    )
    await expect(failing.handleAppPublish(userId, '{"purpose":1}', 'app:m')).rejects.toThrow(ConsentPayloadError)
    await expect(failing.handleAppPublish(userId, '{', 'app:m')).rejects.toThrow(/not JSON/)
    const refusals = await reg.getSingleMetric('pulsegate_consent_refusals_total')!.get()
    expect(Object.fromEntries(refusals.values.map((v) => [v.labels['reason'], v.value]))).toEqual({
      bad_shape: 1,
      not_json: 1,
    })
    await failing.load([userId])
    await expect(failing.set(userId, 'leaderboard', false, 'cli', cli)).rejects.toThrow(/audit log unavailable/)
    expect(failing.leaderboardVisible(userId, true)).toBe(false)
    expect((await p.consent.state(userId)).leaderboard).toMatchObject({ granted: false, version: 1 })
    const changes = await reg.getSingleMetric('pulsegate_consent_changes_total')!.get()
    expect(changes.values).toEqual([
      expect.objectContaining({ labels: { purpose: 'leaderboard', granted: 'false' }, value: 1 }),
    ])
  })

  it('consents is append-only: UPDATE, DELETE and TRUNCATE refused; erasure deletes and leaves one tombstone', async () => {
    const { userId } = await p.addUser({ externalId: 'acct-erase' }, cli)
    await p.consent.set(userId, 'research', true, 'cli', cli)
    await p.consent.set(userId, 'research', false, 'cli', cli)
    const db = tb.pg.db
    await expect(db.query('UPDATE consents SET granted = true WHERE user_id = $1', [userId])).rejects.toThrow(
      /append-only: UPDATE refused/,
    )
    await expect(db.query('DELETE FROM consents WHERE user_id = $1', [userId])).rejects.toThrow(
      /append-only: DELETE refused/,
    )
    await expect(db.query('TRUNCATE consents')).rejects.toThrow(/append-only: TRUNCATE refused/)
    const tombstones = async () =>
      Number(
        (await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM consents WHERE source = 'erasure'`)).rows[0]?.n,
      )
    const t0 = await tombstones()
    const deleted = await db.transaction(async (q) => {
      const n = await eraseConsentRows(q, userId)
      // the permission ended with the erasure's own statement
      await expect(q.query('SELECT 1')).resolves.toBeDefined()
      return n
    })
    expect(deleted).toBe(2)
    expect(await p.consent.history(userId)).toEqual([])
    expect(await tombstones()).toBe(t0 + 1)
    const tomb = await db.query(`SELECT user_id, purpose, granted, version FROM consents WHERE source = 'erasure'`)
    expect(tomb.rows.at(-1)).toEqual({ user_id: null, purpose: null, granted: null, version: null })
    // The setting is transaction-local: afterwards deletions are refused again.
    await p.consent.set(userId, 'research', true, 'cli', cli)
    await expect(db.query('DELETE FROM consents WHERE user_id = $1', [userId])).rejects.toThrow(/append-only/)
    // … and even inside an erasure transaction an UPDATE is refused.
    await expect(
      db.transaction(async (q) => {
        await q.query(`SELECT set_config('pulsegate.erasure', 'on', true)`)
        await q.query('UPDATE consents SET granted = false WHERE user_id = $1', [userId])
      }),
    ).rejects.toThrow(/UPDATE refused/)
    // A purpose outside the five, or a malformed source, is refused by the table itself.
    await expect(
      db.query(
        `INSERT INTO consents (user_id, purpose, granted, version, source) VALUES ($1, 'marketing', true, 9, 'cli')`,
        [userId],
      ),
    ).rejects.toThrow(/consents_purpose_check/)
    await expect(
      db.query(
        `INSERT INTO consents (user_id, purpose, granted, version, source) VALUES ($1, 'research', true, 9, 'web')`,
        [userId],
      ),
    ).rejects.toThrow(/consents_source_check/)
  })

  it('the admin RPC of a running broker: addUser, setConsent, getConsent; refusals are clear', async () => {
    const added = await rpc({ op: 'addUser', externalId: 'acct-rpc-7', name: 'Rhea Rpc', email: 'rhea@rpc.example' })
    expect(added.status).toBe(200)
    expect(added.body).toEqual({ userId: pseudonymFor(p.pseudonymKey, 'acct-rpc-7'), created: true })
    expect(JSON.stringify(added.body)).not.toMatch(/acct-rpc-7|Rhea|rhea@/)
    const userId = added.body['userId'] as string
    expect((await rpc({ op: 'addUser', externalId: 'acct-rpc-7' })).body).toEqual({ userId, created: false })
    expect(await p.people.get(userId)).toMatchObject({ name: 'Rhea Rpc', email: 'rhea@rpc.example' })

    const set = await rpc({ op: 'setConsent', userId, purpose: 'medical_alerts', granted: true })
    expect(set.status).toBe(200)
    expect(set.body['state']).toMatchObject({ medical_alerts: { granted: true, version: 1, source: 'rpc' } })
    const got = await rpc({ op: 'getConsent', userId })
    expect(got.body['history']).toEqual([
      expect.objectContaining({ purpose: 'medical_alerts', eventId: null, granted: true, version: 1, source: 'rpc' }),
    ])

    expect((await rpc({ op: 'setConsent', userId, purpose: 'marketing', granted: true })).status).toBe(400)
    const unknown = await rpc({ op: 'setConsent', userId: 'nobody', purpose: 'research', granted: true })
    expect(unknown).toEqual({ status: 409, body: { error: 'unknown user nobody' } })
    const badTz = await rpc({ op: 'addUser', externalId: 'acct-rpc-8', timeZone: 'Nowhere/Land' })
    expect(badTz.status).toBe(409)
    expect(badTz.body['error']).toMatch(/unknown time zone/)
    const padded = await rpc({ op: 'addUser', externalId: ' acct-rpc-9' })
    expect(padded).toEqual({ status: 409, body: { error: 'the external id starts or ends with white space' } })
  })

  it('the CLI: users add prints the pseudonym, users consent and users consents, live or against the store', async () => {
    // embedded: the broker owns the store, the CLI goes through its admin RPC; postgres: the CLI talks to the server.
    process.env.PULSEGATE_DATA_DIR = tb.dataDir
    process.env.PULSEGATE_LOG_LEVEL = 'silent'
    process.env.PULSEGATE_JWT_SECRET = SECRET
    if (tb.dbUrl) process.env.PULSEGATE_DATABASE_URL = tb.dbUrl
    try {
      const add = await run('users', 'add', '--external', 'cli-acct-55', '--name', 'Cleo Cli', '--birth-year', '1990')
      expect(add.code, add.err).toBe(0)
      const userId = pseudonymFor(p.pseudonymKey, 'cli-acct-55')
      expect(add.out).toBe(userId)
      expect((await run('users', 'add', '--external', 'cli-acct-55', '--email', 'cleo@cli.example')).out).toBe(userId)
      expect(await p.people.get(userId)).toMatchObject({ name: 'Cleo Cli', email: 'cleo@cli.example' })

      const on = await run('users', 'consent', userId, 'research', 'on')
      expect(on).toMatchObject({ code: 0, out: `${userId} research: on (version 1)` })
      expect((await run('users', 'consent', userId, 'research', 'off')).out).toBe(`${userId} research: off (version 2)`)
      const shown = await run('users', 'consents', userId)
      expect(shown.code).toBe(0)
      const source = tb.dbUrl ? 'cli' : 'rpc'
      expect(shown.out).toMatch(new RegExp(`research\\s+off  v2  \\S+  ${source}`))
      expect(shown.out).toMatch(/leaderboard\s+not set/)
      const json = JSON.parse((await run('users', 'consents', userId, '--json')).out) as {
        history: { version: number; source: string }[]
      }
      expect(json.history.map((h) => [h.version, h.source])).toEqual([
        [1, source],
        [2, source],
      ])

      expect((await run('users', 'consent', userId, 'marketing', 'on')).code).toBe(2)
      expect((await run('users', 'consent', userId, 'research', 'maybe')).err).toMatch(/say on or off/)
      expect((await run('users', 'add', '--external', 'x', '--time-zone', '+02:00')).code).toBe(2)
      expect((await run('users', 'add', '--external', ' x')).err).toMatch(/white space/)
      expect((await run('users', 'add')).code).toBe(2)
      const unknown = await run('users', 'consent', 'nobody', 'research', 'on')
      expect(unknown.code).toBe(1)
      expect(unknown.err).toMatch(/unknown user nobody/)
    } finally {
      delete process.env.PULSEGATE_DATABASE_URL
    }
  }, 60_000)
})

describe('migration 0007 on a database that has plaintext people rows and old-style consent rows', () => {
  it('moves plaintext aside, converts consent rows, and the first process with the key encrypts and drops it', async () => {
    const database = await createTestDatabase()
    const log = createLogger('silent')
    const db = openPostgres(database.url, 2, log)
    try {
      // The schema as it was before 0007 (plain PostgreSQL part), applied the way migrate() would.
      await db.exec(
        'CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())',
      )
      for (const f of fs.readdirSync(migrationsDir()).sort()) {
        if (f >= '0007' || f.endsWith('.tsdb.sql')) continue
        for (const s of statements(fs.readFileSync(path.join(migrationsDir(), f), 'utf8'))) await db.query(s)
        await db.query('INSERT INTO schema_migrations (version) VALUES ($1)', [f])
      }
      await db.query(`INSERT INTO users (user_id) VALUES ('old-1'), ('old-2')`)
      await db.query(`INSERT INTO people VALUES ('old-1', 'Olga Oldrow', 'olga@old.example'), ('old-2', NULL, NULL)`)
      await db.query(`INSERT INTO events (event_id) VALUES ('race-x')`)
      await db.query(
        `INSERT INTO consents (user_id, purpose, granted, source, at) VALUES
           ('old-1', 'leaderboard:race-x', true, 'event join', now() - interval '2 min'),
           ('old-1', 'leaderboard:race-x', false, 'event join', now() - interval '1 min')`,
      )
      await migrate(db, log)
      const legacy = await db.query<{ t: string | null }>(`SELECT to_regclass('people_plaintext_legacy')::text AS t`)
      expect(legacy.rows[0]?.t).toBe('people_plaintext_legacy')
      const converted = await db.query(
        'SELECT purpose, event_id, granted, version, source FROM consents WHERE user_id = $1 ORDER BY version',
        ['old-1'],
      )
      expect(converted.rows).toEqual([
        { purpose: 'leaderboard', event_id: 'race-x', granted: true, version: 1, source: 'event-join:race-x' },
        { purpose: 'leaderboard', event_id: 'race-x', granted: false, version: 2, source: 'event-join:race-x' },
      ])

      const cfg = { dataDir: tempDir('pulsegate-legacy-'), privacy: { auditCheckpointMs: 0 } }
      const p = await openPrivacyServices(cfg, db, { audit: { record: async () => {} } })
      expect(await p.people.get('old-1')).toEqual({ userId: 'old-1', name: 'Olga Oldrow', email: 'olga@old.example' })
      expect((await db.query(`SELECT to_regclass('people_plaintext_legacy')::text AS t`)).rows[0]).toEqual({ t: null })
      // joins keep versioning the converted history
      await new Registry(db).joinEvent('race-x', 'old-1', { consentLeaderboard: true })
      const last = await p.consent.history('old-1')
      expect(last.at(-1)).toMatchObject({ eventId: 'race-x', granted: true, version: 3 })
    } finally {
      await db.close()
      await database.drop()
    }
  })
})
