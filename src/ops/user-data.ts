// Reading one person's data a page at a time (keyset pagination): samples and positions through the user's devices
// (devices.user_id → device_key), and the rows of the side tables that name them. Never one big result: a page is
// `pageRows` rows whatever the user's history holds, and each page is its own short statement, so this works the
// same on a pg pool and on the embedded store's single connection (no server-side cursor held open).
import type { Queryable } from '../store/db.js'

export interface DeviceRef {
  key: number
  id: string
}

/** [from, to) in epoch ms; either end open. */
export interface TimeRange {
  from?: number
  to?: number
}

/** Times travel as float8 microseconds since the epoch: exact for every timestamptz and a plain number in both drivers. */
export interface SampleRow {
  us: number
  value: number
}

export interface PositionRow {
  us: number
  lat: number
  lon: number
  alt: number | null
  acc: number | null
}

export const DEFAULT_PAGE_ROWS = 10_000

const US = '(extract(epoch FROM time) * 1000000)::float8 AS us'

/** The user's devices, or null when there is no such user. */
export async function userDevices(db: Queryable, userId: string): Promise<DeviceRef[] | null> {
  const user = await db.query('SELECT 1 FROM users WHERE user_id = $1', [userId])
  if (user.rows.length === 0) return null
  const res = await db.query<{ device_key: number; device_id: string }>(
    'SELECT device_key, device_id FROM devices WHERE user_id = $1 ORDER BY device_key',
    [userId],
  )
  return res.rows.map((r) => ({ key: Number(r.device_key), id: r.device_id }))
}

/** The metric codes a device has rows of: a loose index scan (one index probe per code, not a scan of its rows). */
export async function metricsOf(db: Queryable, deviceKey: number): Promise<number[]> {
  const res = await db.query<{ metric: number }>(
    `WITH RECURSIVE m(metric) AS (
       SELECT min(metric) FROM samples WHERE device_key = $1
       UNION ALL
       SELECT (SELECT min(s.metric) FROM samples s WHERE s.device_key = $1 AND s.metric > m.metric)
       FROM m WHERE m.metric IS NOT NULL)
     SELECT metric FROM m WHERE metric IS NOT NULL`,
    [deviceKey],
  )
  return res.rows.map((r) => Number(r.metric))
}

/** The time conditions of a page: after the last row seen (or from `from`), before `to`. */
function timeWhere(range: TimeRange, afterUs: number | null, params: unknown[]): string {
  let sql = ''
  if (afterUs !== null) {
    params.push(afterUs)
    sql += ` AND time > to_timestamp($${params.length}::float8 / 1000000)`
  } else if (range.from !== undefined) {
    params.push(range.from)
    sql += ` AND time >= to_timestamp($${params.length}::float8 / 1000)`
  }
  if (range.to !== undefined) {
    params.push(range.to)
    sql += ` AND time < to_timestamp($${params.length}::float8 / 1000)`
  }
  return sql
}

/**
 * Keyset pages: the next page is asked for as soon as this one arrives, so the database reads it while the caller
 * formats and writes this one (two pages in memory at most; with the embedded store the two simply take turns).
 */
async function* keysetPages<R extends { us: number }>(
  pageRows: number,
  query: (afterUs: number | null) => Promise<R[]>,
): AsyncGenerator<R[]> {
  const ask = (after: number | null) => {
    const p = query(after)
    p.catch(() => {}) // a prefetch the caller abandons (it stopped on an error) must not be an unhandled rejection
    return p
  }
  let next: Promise<R[]> | null = ask(null)
  while (next !== null) {
    const rows: R[] = await next
    next = rows.length === pageRows ? ask((rows[rows.length - 1] as R).us) : null
    if (rows.length > 0) yield rows
  }
}

/** One device's samples of one metric in time order, `pageRows` at a time. */
export function samplePages(
  db: Queryable,
  deviceKey: number,
  metric: number,
  range: TimeRange,
  pageRows = DEFAULT_PAGE_ROWS,
): AsyncGenerator<SampleRow[]> {
  return keysetPages(pageRows, async (after) => {
    const params: unknown[] = [deviceKey, metric]
    const where = timeWhere(range, after, params)
    params.push(pageRows)
    const res = await db.query<SampleRow>(
      `SELECT ${US}, value FROM samples WHERE device_key = $1 AND metric = $2${where}
       ORDER BY time LIMIT $${params.length}`,
      params,
    )
    return res.rows
  })
}

/** One device's positions in time order, `pageRows` at a time. */
export function positionPages(
  db: Queryable,
  deviceKey: number,
  range: TimeRange,
  pageRows = DEFAULT_PAGE_ROWS,
): AsyncGenerator<PositionRow[]> {
  return keysetPages(pageRows, async (after) => {
    const params: unknown[] = [deviceKey]
    const where = timeWhere(range, after, params)
    params.push(pageRows)
    const res = await db.query<PositionRow>(
      `SELECT ${US}, lat, lon, alt, acc FROM positions WHERE device_key = $1${where}
       ORDER BY time LIMIT $${params.length}`,
      params,
    )
    return res.rows
  })
}

/** The time (µs) of the device's last sample of `metric` before `beforeMs`: where a steps interval starts. */
export async function previousSampleUs(
  db: Queryable,
  deviceKey: number,
  metric: number,
  beforeMs: number,
): Promise<number | null> {
  const res = await db.query<{ us: number }>(
    `SELECT ${US} FROM samples WHERE device_key = $1 AND metric = $2 AND time < to_timestamp($3::float8 / 1000)
     ORDER BY time DESC LIMIT 1`,
    [deviceKey, metric, beforeMs],
  )
  return res.rows[0]?.us ?? null
}

/** Rows per (device, metric) code and positions per device, for reports and checks. */
export async function countUserRows(
  db: Queryable,
  deviceKeys: readonly number[],
): Promise<{ samples: Map<number, number>; positions: number }> {
  const s = await db.query<{ metric: number; n: number }>(
    'SELECT metric, count(*)::float8 AS n FROM samples WHERE device_key = ANY($1::int4[]) GROUP BY metric',
    [deviceKeys],
  )
  const p = await db.query<{ n: number }>(
    'SELECT count(*)::float8 AS n FROM positions WHERE device_key = ANY($1::int4[])',
    [deviceKeys],
  )
  return {
    samples: new Map(s.rows.map((r) => [Number(r.metric), Number(r.n)])),
    positions: Number(p.rows[0]?.n ?? 0),
  }
}

// ---- side tables: consents, alerts, recommendations, the audit trail ----

/** A table that names users, found by looking (some arrive from other parts of pulsegate, with their own columns). */
export interface SideTable {
  table: string
  userColumn: string
  /** primary-key columns for keyset pages, with their SQL types; empty → ctid (the table has none) */
  key: { name: string; type: string }[]
}

const quote = (ident: string): string => `"${ident.replace(/"/g, '""')}"`

/** The first of `tables` that exists in the current schema, with the first of `userColumns` it has. */
export async function findSideTable(
  db: Queryable,
  tables: readonly string[],
  userColumns: readonly string[],
): Promise<SideTable | null> {
  for (const table of tables) {
    const cols = await db.query<{ column_name: string }>(
      `SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1`,
      [table],
    )
    if (cols.rows.length === 0) continue
    const names = new Set(cols.rows.map((c) => c.column_name))
    const userColumn = userColumns.find((c) => names.has(c))
    if (userColumn === undefined) continue
    const pk = await db.query<{ attname: string; type: string }>(
      `SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type FROM pg_index i
       JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
       WHERE i.indrelid = to_regclass($1) AND i.indisprimary
       ORDER BY array_position(i.indkey::int2[], a.attnum)`,
      [quote(table)],
    )
    return { table, userColumn, key: pk.rows.map((r) => ({ name: r.attname, type: r.type })) }
  }
  return null
}

/** The table's rows about the user as JSON objects (to_jsonb: every column, timestamps as ISO text), in key order. */
export async function* sideTableRows(
  db: Queryable,
  t: SideTable,
  userId: string,
  pageRows = DEFAULT_PAGE_ROWS,
): AsyncGenerator<Record<string, unknown>[]> {
  // Key values go back and forth as text so nothing is rounded (a timestamptz through a JS Date would lose µs).
  const keyCols = t.key.length > 0 ? t.key.map((k) => quote(k.name)) : ['ctid']
  const keyTypes = t.key.length > 0 ? t.key.map((k) => k.type) : ['tid']
  const keyText = keyCols.map((c, i) => `${c}::text AS k${i}`).join(', ')
  const keyTuple = `(${keyCols.join(', ')})`
  let after: string[] | null = null
  for (;;) {
    const params: unknown[] = [userId]
    let cond = ''
    if (after !== null) {
      const marks = after.map((v, i) => {
        params.push(v)
        return `$${params.length}::${keyTypes[i]}`
      })
      cond = ` AND ${keyTuple} > (${marks.join(', ')})`
    }
    params.push(pageRows)
    const res = await db.query<Record<string, unknown>>(
      `SELECT to_jsonb(x) AS row, ${keyText} FROM ${quote(t.table)} x
       WHERE ${quote(t.userColumn)} = $1${cond} ORDER BY ${keyCols.join(', ')} LIMIT $${params.length}`,
      params,
    )
    if (res.rows.length > 0) yield res.rows.map((r) => r.row as Record<string, unknown>)
    if (res.rows.length < pageRows) return
    const last = res.rows[res.rows.length - 1] as Record<string, unknown>
    after = keyCols.map((_, i) => String(last[`k${i}`]))
  }
}
