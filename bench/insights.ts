import fs from 'node:fs'
import os from 'node:os'
import { parseArgs } from 'node:util'
import { Registry as PromRegistry } from 'prom-client'
import { loadConfig } from '../broker.config.js'
import { InsightsEngine } from '../src/insights/engine.js'
import { computeFeatures, DEFAULT_FEATURE_SETTINGS } from '../src/insights/features.js'
import { createInsightsMetrics } from '../src/insights/metrics.js'
import { createPreferencesMetrics } from '../src/insights/preferences/metrics.js'
import { PreferencesService } from '../src/insights/preferences/service.js'
import { PreferencesStore } from '../src/insights/preferences/store.js'
import { createLogger } from '../src/log.js'
import { ConsentService } from '../src/ops/consent.js'
import { migrate } from '../src/store/migrate.js'
import { num, oneOf, printHeaderAndExit } from './lib/args.js'
import { openFreshStore } from './lib/fresh-store.js'

const { values: a } = parseArgs({
  options: {
    store: { type: 'string', default: 'postgres' },
    users: { type: 'string', default: '100000' },
    days: { type: 'string', default: '35' },
    'minute-users': { type: 'string', default: '1000' },
    round: { type: 'string', default: '20000' },
    help: { type: 'boolean', default: false },
  },
})
if (a.help) printHeaderAndExit(import.meta.url)
const store = oneOf('store', a.store, ['postgres', 'embedded'])
const USERS = num('users', a.users, 10)
const DAYS = num('days', a.days, 28)
const MINUTE_USERS = Math.min(USERS, num('minute-users', a['minute-users'], 1))
const ROUND = num('round', a.round, 1)

const say = (s: string) => process.stderr.write(`[insights-bench] ${s}\n`)
const log = createLogger('warn', 'insights-bench')
const AT = new Date('2026-03-26T08:00:00Z')

/** CPU seconds of a local PostgreSQL backend (utime + stime from /proc), or null when it is not readable. */
function backendCpu(pid: number | null): number | null {
  if (pid === null) return null
  try {
    const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.split(' ') ?? []
    return (Number(f[11]) + Number(f[12])) / 100
  } catch {
    return null
  }
}

// One connection: the backend whose CPU is read from /proc is the one doing the work.
const { db, cleanup } = await openFreshStore(store, { connections: 1, tmpPrefix: 'pulsegate-insights-bench-', log })
try {
  const { timescale } = await migrate(db, log)
  const pid =
    db.kind === 'postgres' ? Number((await db.query<{ p: number }>('SELECT pg_backend_pid() AS p')).rows[0]?.p) : null
  const t0 = performance.now()
  await db.query(
    `INSERT INTO users (user_id, birth_year, time_zone)
     SELECT 'bu' || g, 1950 + g % 50, (ARRAY['UTC', 'Europe/Berlin', 'America/New_York', 'Asia/Tokyo'])[1 + g % 4]
     FROM generate_series(0, $1::int - 1) g`,
    [USERS],
  )
  await db.query(
    `INSERT INTO devices (device_id, user_id) SELECT 'bt' || g, 'bu' || g FROM generate_series(0, $1::int - 1) g`,
    [USERS],
  )
  await db.query(
    `INSERT INTO consents (user_id, purpose, granted, source, version)
     SELECT 'bu' || g, 'recommendations', true, 'cli', 1 FROM generate_series(0, $1::int - 1) g`,
    [USERS],
  )
  // History through today, 26 March, whose night has closed in all four zones at AT (08:00 UTC: 09:00 Berlin, 04:00
  // New York is still night there, so New York users get no rhr verdict: a quarter of the planted ones; 17:00 Tokyo).
  await db.query(
    `INSERT INTO daily_features (user_id, day, time_zone, rhr_night, rest_minutes, night_minutes, steps, wear_minutes,
                                 moderate_min, vigorous_min, edwards, load, hr_rest_used, hr_max_used, day_complete,
                                 evaluated_at)
     SELECT 'bu' || g, d::date, 'UTC',
            CASE WHEN g % 20 = 0 AND d::date >= $2::date - 1 THEN 62 ELSE 50 + abs(hashtext(g || ':' || d)) % 6 END,
            400, 420, 3000 + abs(hashtext(d || ':' || g)) % 9000, 1200,
            abs(hashtext('m' || g || d)) % 40, abs(hashtext('v' || g || d)) % 15,
            x.load, x.load, 55, 180, true, now()
     FROM generate_series(0, $1::int - 1) g
     CROSS JOIN generate_series($2::date - $3::int + 1, $2::date, interval '1 day') d
     CROSS JOIN LATERAL (SELECT (CASE WHEN g % 20 = 1 AND d::date > $2::date - 7 THEN 300 ELSE 60 END
                                 + abs(hashtext('l' || g || d)) % 20)::real AS load) x`,
    [USERS, '2026-03-26', DAYS],
  )
  say(`wrote ${USERS} users × ${DAYS} days of features in ${Math.round(performance.now() - t0)} ms`)

  // Per-minute samples (HR every minute, steps every 10th) for the last two local days of MINUTE_USERS users.
  const t1 = performance.now()
  await db.query(
    `INSERT INTO samples (time, device_key, metric, value)
     SELECT t, d.device_key, m, CASE WHEN m = 1 THEN 55 + extract(minute FROM t)::int % 40 ELSE 12 END
     FROM devices d CROSS JOIN generate_series($2::timestamptz, $3::timestamptz, interval '1 minute') t
     CROSS JOIN (VALUES (1), (3)) mm(m)
     WHERE d.device_key <= $1::int AND (m = 1 OR extract(minute FROM t)::int % 10 = 0)`,
    [MINUTE_USERS, '2026-03-24T00:00:00Z', '2026-03-26T07:59:00Z'],
  )
  say(`wrote the per-minute samples of ${MINUTE_USERS} users in ${Math.round(performance.now() - t1)} ms`)

  // Their last days are recomputed from these minutes (no rest minutes, so no resting HR): the planted elevated nights
  // of the first --minute-users users are overwritten, and they get no rhr_elevated below.
  const minuteUsers = Array.from({ length: MINUTE_USERS }, (_, i) => `bu${i}`)
  const cpu0 = process.cpuUsage()
  const b0 = backendCpu(pid)
  const f0 = performance.now()
  await computeFeatures(db, timescale, minuteUsers, AT, { ...DEFAULT_FEATURE_SETTINGS, minSamplesPerMinute: 1 })
  const featureMs = performance.now() - f0
  const featureCpu = process.cpuUsage(cpu0)
  const featureBackend = b0 === null ? null : (backendCpu(pid) ?? 0) - b0
  say(`features of ${MINUTE_USERS} users from per-minute data: ${Math.round(featureMs)} ms`)

  const config = loadConfig({ insights: { minSamplesPerMinute: 1 } }, {})
  const sink = { record: async () => {} }
  const prom = new PromRegistry()
  const engine = new InsightsEngine({
    db,
    timescale: () => timescale,
    consent: new ConsentService(db, sink),
    preferences: new PreferencesService(
      new PreferencesStore(db),
      { publish: async () => {} },
      config.preferences,
      createPreferencesMetrics(prom),
      log,
    ),
    publisher: { publish: () => {} },
    metrics: createInsightsMetrics(prom),
    log,
    settings: config.insights,
  })
  // The daily rules alone, on the stored features (the feature statements, which for users with up-to-date history
  // touch the last two days only, are timed above). Rounds of --round users, as the scheduler makes them; one rule at a
  // time so a round's candidates go through the delivery once per rule (the budget still counts across them).
  const all = Array.from({ length: USERS }, (_, i) => `bu${i}`)
  const cpu1 = process.cpuUsage()
  const b1 = backendCpu(pid)
  const r0 = performance.now()
  let delivered = 0
  const byRule: Record<string, number> = {}
  for (let i = 0; i < all.length; i += ROUND) {
    for (const rule of ['rhr_elevated', 'zone_minutes_weekly', 'step_goal', 'load_jump', 'recovery_day'] as const) {
      const r = await engine.run({ userIds: all.slice(i, i + ROUND), rule, at: AT, skipFeatures: true })
      delivered += r.delivered.length
      for (const p of r.delivered) byRule[p.rule] = (byRule[p.rule] ?? 0) + 1
    }
  }
  const rulesMs = performance.now() - r0
  const rulesCpu = process.cpuUsage(cpu1)
  const rulesBackend = b1 === null ? null : (backendCpu(pid) ?? 0) - b1
  await engine.stop()
  const out = {
    bench: 'insights',
    store,
    timescale,
    users: USERS,
    days: DAYS,
    round: ROUND,
    rulesMs: Math.round(rulesMs),
    rulesCpuMs: Math.round((rulesCpu.user + rulesCpu.system) / 1000),
    rulesBackendCpuS: rulesBackend,
    usersPerSecond: Math.round(USERS / (rulesMs / 1000)),
    recommendations: delivered,
    byRule,
    featureUsers: MINUTE_USERS,
    featureMs: Math.round(featureMs),
    featureCpuMs: Math.round((featureCpu.user + featureCpu.system) / 1000),
    featureBackendCpuS: featureBackend,
    cpus: os.cpus().length,
    loadavg: os.loadavg()[0],
  }
  console.log(
    `daily rules, ${USERS} users × ${DAYS} days on ${store}${timescale ? ' (TimescaleDB)' : ''}: ` +
      `${out.rulesMs} ms wall, ${out.rulesCpuMs} ms CPU here` +
      (rulesBackend === null ? '' : `, ${rulesBackend.toFixed(2)} s CPU in the PostgreSQL backend`) +
      `, ${out.usersPerSecond} users/s; ${delivered} recommendations ${JSON.stringify(byRule)}`,
  )
  console.log(
    `features from per-minute data, ${MINUTE_USERS} users × 2 days: ${out.featureMs} ms wall, ${out.featureCpuMs} ms CPU here` +
      (featureBackend === null ? '' : `, ${featureBackend.toFixed(2)} s CPU in the backend`),
  )
  console.log(JSON.stringify(out))
} finally {
  await cleanup()
}
