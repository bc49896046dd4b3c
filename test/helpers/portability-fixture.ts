// A person with history for the export/import tests: two devices with samples of every metric (random doubles, so
// the round trip has to be exact to the last bit), GPS tracks, consents and alerts; and a second person whose rows
// must never leak into the first one's export.
import crypto from 'node:crypto'
import { Writable } from 'node:stream'
import type { Db } from '../../src/store/db.js'
import { Registry } from '../../src/store/registry.js'

export const USER = 'port-alice'
export const OTHER = 'port-bob'
export const TRK = 'port-trk'
export const PHONE = 'port-phone'
export const OTHER_DEV = 'port-bob-trk'
/** the main track starts 10 days back: older than the live late-arrival window, which imports must not apply */
export const T0 = Math.floor((Date.now() - 10 * 86_400_000) / 1000) * 1000

export interface Fixture {
  keys: Map<string, number>
  /** device keys of USER */
  userKeys: number[]
}

export async function buildFixture(db: Db): Promise<Fixture> {
  const registry = new Registry(db)
  const keys = await registry.registerDevices([
    { deviceId: TRK, userId: USER, fingerprint: 'AA:01' },
    { deviceId: PHONE, userId: USER, fingerprint: 'AA:02' },
    { deviceId: OTHER_DEV, userId: OTHER, fingerprint: 'AA:03' },
  ])
  const trk = keys.get(TRK) as number
  const phone = keys.get(PHONE) as number
  const bob = keys.get(OTHER_DEV) as number
  // (device, metric, rows, spacing ms, offset ms, value expression in i): all inside the plausibility bounds.
  const series: [number, number, number, number, number, string][] = [
    [trk, 1, 3000, 1000, 0, '60 + random() * 100'],
    [trk, 2, 300, 10_000, 0, '90 + random() * 10'],
    [trk, 3, 1000, 3000, 0, 'floor(random() * 8)'],
    [trk, 4, 200, 15_000, 0, 'random() * 180'],
    [trk, 5, 100, 30_000, 0, '30 + random() * 5'],
    [trk, 6, 100, 30_000, 0, '10 + random() * 10'],
    [trk, 7, 1000, 3000, 0, 'random() * 3'],
    [phone, 1, 500, 1000, 500, '70 + random() * 50'],
    [bob, 1, 100, 1000, 0, '80 + random() * 10'],
  ]
  for (const [dev, metric, n, every, offset, value] of series) {
    await db.query(
      `INSERT INTO samples (time, device_key, metric, value)
       SELECT to_timestamp(($1::float8 + i * $2::float8) / 1000), $3, $4, ${value} FROM generate_series(0, $5 - 1) i`,
      [T0 + offset, every, dev, metric, n],
    )
  }
  // Tracks at ~1.1 m/s (well under the 12.5 m/s speed bound); some points without altitude or accuracy.
  for (const [dev, n, offset] of [
    [trk, 1500, 0],
    [phone, 200, 250],
    [bob, 50, 0],
  ] as const) {
    await db.query(
      `INSERT INTO positions (time, device_key, lat, lon, alt, acc)
       SELECT to_timestamp(($1::float8 + i * 1000) / 1000), $2, 52.5 + i * 0.00001 + random() * 1e-7,
              13.4 + random() * 1e-7, CASE WHEN i % 7 = 0 THEN NULL ELSE 30 + random() * 5 END,
              CASE WHEN i % 5 = 0 THEN NULL ELSE 3 + random() * 10 END
       FROM generate_series(0, $3 - 1) i`,
      [T0 + offset, dev, n],
    )
  }
  await db.query(
    `INSERT INTO consents (user_id, purpose, granted, source, version) VALUES ($1, 'leaderboard', true, 'app:fixture', 1),
       ($1, 'research', false, 'app:fixture', 1), ($2, 'leaderboard', true, 'app:fixture', 1)`,
    [USER, OTHER],
  )
  for (const [user, device, kind] of [
    [USER, TRK, 'hr_high'],
    [USER, PHONE, 'spo2_low'],
    [OTHER, OTHER_DEV, 'hr_high'],
  ]) {
    await db.query(
      `INSERT INTO alerts (id, user_id, device_id, kind, severity, opened_at, evidence)
       VALUES ($1, $2, $3, $4, 'warning', now() - interval '1 day', '{"hr": 131}')`,
      [crypto.randomUUID(), user, device, kind],
    )
  }
  return { keys, userKeys: [trk, phone] }
}

/** The user's rows exactly as stored (times in µs, every double as is), for before/after comparisons. */
export async function snapshot(db: Db, deviceKeys: readonly number[]) {
  const samples = await db.query(
    `SELECT device_key, metric, (extract(epoch FROM time) * 1000000)::float8 AS us, value
     FROM samples WHERE device_key = ANY($1::int4[]) ORDER BY 1, 2, 3`,
    [deviceKeys],
  )
  const positions = await db.query(
    `SELECT device_key, (extract(epoch FROM time) * 1000000)::float8 AS us, lat, lon, alt, acc
     FROM positions WHERE device_key = ANY($1::int4[]) ORDER BY 1, 2`,
    [deviceKeys],
  )
  return { samples: samples.rows, positions: positions.rows }
}

export async function erase(db: Db, deviceKeys: readonly number[]): Promise<void> {
  await db.query('DELETE FROM samples WHERE device_key = ANY($1::int4[])', [deviceKeys])
  await db.query('DELETE FROM positions WHERE device_key = ANY($1::int4[])', [deviceKeys])
}

/** Rows per (device id, metric code) and positions per device id, from the database. */
export async function dbCounts(db: Db, userId: string) {
  const s = await db.query<{ device_id: string; metric: number; n: number }>(
    `SELECT d.device_id, s.metric, count(*)::int AS n FROM samples s JOIN devices d USING (device_key)
     WHERE d.user_id = $1 GROUP BY 1, 2`,
    [userId],
  )
  const p = await db.query<{ device_id: string; n: number }>(
    `SELECT d.device_id, count(*)::int AS n FROM positions p JOIN devices d USING (device_key)
     WHERE d.user_id = $1 GROUP BY 1`,
    [userId],
  )
  const samples = new Map(s.rows.map((r) => [`${r.device_id}/${r.metric}`, r.n]))
  const positions = new Map(p.rows.map((r) => [r.device_id, r.n]))
  return { samples, positions }
}

/** A Writable that keeps what it is given (small test exports only). */
export function collector(): { out: Writable; text(): string; buffer(): Buffer } {
  const chunks: Buffer[] = []
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk)
      cb()
    },
  })
  return { out, text: () => Buffer.concat(chunks).toString('utf8'), buffer: () => Buffer.concat(chunks) }
}
