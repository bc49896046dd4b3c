// Alert episodes on their own, against a real PostgreSQL: an episode is in the `alerts` table before its message is
// published, opens once (also when two broker processes see the same user), resolves with the same id, and the same
// kind stays quiet for the cooldown after it resolved.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createLogger } from '../../src/log.js'
import { createMetrics } from '../../src/metrics.js'
import { Episodes } from '../../src/outputs/episodes.js'
import type { AlertMessage } from '../../src/outputs/payloads.js'
import { DEFAULT_RULES } from '../../src/outputs/rules.js'
import { blankState, type UserState } from '../../src/outputs/user-state.js'
import type { Db } from '../../src/store/db.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { testConsent } from '../helpers/consent.js'
import { createTestDatabase } from '../helpers/harness.js'

const T = Date.now() - 10 * 60_000
const settings = { rules: DEFAULT_RULES, cooldownMs: 2 * 60_000 }

let dropDb: () => Promise<void>
let db: Db
/** a second pool on the same database, as another broker process has */
let other: Db
/** real consent on the test database; its users are loaded before their episodes are reviewed */
let consent: ReturnType<typeof testConsent>['consent']

beforeAll(async () => {
  const created = await createTestDatabase()
  dropDb = created.drop
  const log = createLogger('silent')
  db = openPostgres(created.url, 2, log)
  other = openPostgres(created.url, 2, log)
  await migrate(db, log)
  consent = testConsent(db).consent
  await consent.load(['ep-alice', 'ep-bob', 'ep-carol'])
})
afterAll(async () => {
  await other?.close()
  await db?.close()
  await dropDb?.()
})

/** Records what is published and, at the moment of publishing, asks the database for the episode's row. */
function recorder(check: Db) {
  const out: { topic: string; msg: AlertMessage; qos: number; retain: boolean }[] = []
  const rowsAtPublish: Promise<{ resolved_at: Date | null }[]>[] = []
  return {
    out,
    rowsAtPublish,
    publish(topic: string, payload: string | Buffer, qos: 0 | 1, retain: boolean) {
      const msg = JSON.parse(payload.toString()) as AlertMessage
      out.push({ topic, msg, qos, retain })
      rowsAtPublish.push(
        check
          .query<{ resolved_at: Date | null }>('SELECT resolved_at FROM alerts WHERE id = $1', [msg.id])
          .then((r) => r.rows),
      )
    },
  }
}

/** SpO2 below 90 % for a minute: a `spo2_low` warning. */
function hypoxic(userId: string, eventId: string | null): UserState {
  const u = blankState(userId, `trk-${userId}`)
  u.event = eventId ? { eventId, consent: true, startsAt: null, courseM: null } : null
  u.window.spo2.push({ t: T, v: 88 }, { t: T + 30_000, v: 88 }, { t: T + 60_000, v: 87 })
  return u
}

describe('alert episodes', () => {
  it('opens once, in the database before the message; resolves with the same id; then cools down', async () => {
    const pub = recorder(other)
    const metrics = createMetrics()
    const episodes = new Episodes(db, pub, consent, metrics, settings)
    const u = hypoxic('ep-alice', 'ev-ep')

    await episodes.review(u, T + 60_000)
    expect(pub.out.map((m) => [m.topic, m.qos, m.retain])).toEqual([
      ['users/ep-alice/alerts', 1, false],
      ['events/ev-ep/alerts', 1, false],
    ])
    const opened = pub.out[0]?.msg as AlertMessage
    expect(opened).toEqual({
      id: expect.any(String),
      kind: 'spo2_low',
      severity: 'warning',
      state: 'opened',
      userId: 'ep-alice',
      deviceId: 'trk-ep-alice',
      eventId: 'ev-ep',
      openedAt: T + 60_000,
      resolvedAt: null,
      evidence: { t: T + 60_000, spo2: 87, threshold: 90 },
    })
    expect(pub.out[1]?.msg).toEqual(opened)
    expect(await Promise.all(pub.rowsAtPublish)).toEqual([[{ resolved_at: null }], [{ resolved_at: null }]])
    expect(u.open.get('spo2_low')?.id).toBe(opened.id)

    // Still low a little later: the episode is open already, nothing new.
    u.window.spo2.push({ t: T + 70_000, v: 86 })
    await episodes.review(u, T + 70_000)
    expect(pub.out).toHaveLength(2)

    u.window.spo2.push({ t: T + 80_000, v: 95 })
    await episodes.review(u, T + 80_000)
    expect(pub.out).toHaveLength(4)
    const resolved = pub.out[2]?.msg as AlertMessage
    expect(resolved).toMatchObject({ id: opened.id, state: 'resolved', openedAt: T + 60_000, resolvedAt: T + 80_000 })
    expect(resolved.evidence).toEqual({ t: T + 80_000, spo2: 95 })
    const rows = await Promise.all(pub.rowsAtPublish.slice(2))
    expect(rows.map((r) => r[0]?.resolved_at?.getTime())).toEqual([T + 80_000, T + 80_000])
    expect(u.open.size).toBe(0)

    // Low again within the two minutes after resolving: quiet.
    u.window.spo2.push({ t: T + 90_000, v: 88 }, { t: T + 150_000, v: 88 })
    u.window.spo2.splice(0, u.window.spo2.length - 2)
    await episodes.review(u, T + 150_000)
    expect(pub.out).toHaveLength(4)
    // Past the cooldown: a new episode with a new id.
    u.window.spo2.push({ t: T + 210_000, v: 84 })
    await episodes.review(u, T + 210_000)
    expect(pub.out).toHaveLength(6)
    expect(pub.out[4]?.msg).toMatchObject({ state: 'opened', severity: 'critical', openedAt: T + 210_000 })
    expect(pub.out[4]?.msg.id).not.toBe(opened.id)

    const counts = await db.query<{ n: number }>("SELECT count(*)::int AS n FROM alerts WHERE user_id = 'ep-alice'")
    expect(counts.rows[0]?.n).toBe(2)
    expect((await metrics.alertsOpened.get()).values.find((v) => v.labels.kind === 'spo2_low')?.value).toBe(2)
    expect((await metrics.alertsResolved.get()).values.find((v) => v.labels.kind === 'spo2_low')?.value).toBe(1)
  })

  it('two broker processes seeing the same user open one episode between them', async () => {
    const a = recorder(db)
    const b = recorder(db)
    const ua = hypoxic('ep-bob', null)
    const ub = hypoxic('ep-bob', null)
    await Promise.all([
      new Episodes(db, a, consent, createMetrics(), settings).review(ua, T + 60_000),
      new Episodes(other, b, consent, createMetrics(), settings).review(ub, T + 60_000),
    ])
    const published = [...a.out, ...b.out]
    expect(published.map((m) => m.topic)).toEqual(['users/ep-bob/alerts'])
    expect(ua.open.size + ub.open.size).toBe(1)
    const rows = await db.query<{ id: string }>("SELECT id FROM alerts WHERE user_id = 'ep-bob'")
    expect(rows.rows.map((r) => r.id)).toEqual([published[0]?.msg.id])
  })

  it("withdrawn medical_alerts: the user still gets the alert, the event's medics do not, and it is counted", async () => {
    await db.query("INSERT INTO users (user_id) VALUES ('ep-carol') ON CONFLICT DO NOTHING")
    await consent.set('ep-carol', 'medical_alerts', false, 'cli', { role: 'cli', id: null })
    const pub = recorder(db)
    const metrics = createMetrics()
    await new Episodes(db, pub, consent, metrics, settings).review(hypoxic('ep-carol', 'ev-ep'), T + 60_000)
    expect(pub.out.map((m) => m.topic)).toEqual(['users/ep-carol/alerts'])
    const withheld = (await metrics.outputsWithheld.get()).values
    expect(withheld).toEqual([
      expect.objectContaining({ labels: { output: 'event_alerts', reason: 'consent' }, value: 1 }),
    ])
  })
})
