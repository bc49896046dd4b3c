// Delta sync by commit order (issue #14): the cursor is a position in the order rows were committed, across readings,
// alerts, recommendations and consent changes, so one cursor brings an app fully up to date, late uploads included.
//
// Position = (commit_seq, kind, key). commit_seq is the id of the transaction that wrote (or last changed) the row
// (migration 0014). Ids are handed out at a transaction's first write, not at its commit, so id order is not commit
// order: a reader that went past id 100 while 99 was still running would never see 99's rows. So a reader reads only
// below its snapshot's xmin (the horizon): every transaction with a smaller id has finished, committed or not, and no
// row can appear there any more. Rows of one transaction are ordered by kind, then by their key.
import { z } from 'zod'
import type { Queryable } from '../store/db.js'

export const SYNC_KINDS = ['readings', 'alerts', 'recommendations', 'consents'] as const
export type SyncKind = (typeof SYNC_KINDS)[number]
/** "everything below seq delivered": a kind after every real kind */
const DONE_KIND = SYNC_KINDS.length

export interface Position {
  seq: number
  kind: number
  key: (number | string)[]
}

/** The start of the commit order: a first sync sends this. */
export const START_CURSOR = '0'
const PREFIX = 'c1.'
const posSchema = z
  .tuple([z.number().int().min(0), z.number().int().min(0).max(DONE_KIND)])
  .rest(z.union([z.number(), z.string().max(200)]))

export class BadCursorError extends Error {}

export function encodeCursor(p: Position): string {
  return PREFIX + Buffer.from(JSON.stringify([p.seq, p.kind, ...p.key])).toString('base64url')
}

export function decodeCursor(c: string): Position {
  if (c === START_CURSOR) return { seq: 0, kind: DONE_KIND, key: [] }
  if (!c.startsWith(PREFIX)) throw new BadCursorError('not a commit-order cursor: send "0" or a nextCursor you got')
  let raw: unknown
  try {
    raw = JSON.parse(Buffer.from(c.slice(PREFIX.length), 'base64url').toString('utf8'))
  } catch {
    throw new BadCursorError('cursor is corrupt')
  }
  const parsed = posSchema.safeParse(raw)
  if (!parsed.success) throw new BadCursorError('cursor is corrupt')
  const [seq, kind, ...key] = parsed.data
  return { seq, kind, key }
}

interface KindQuery {
  /** FROM … WHERE user = $1 (the other parameters are appended) */
  from: string
  seq: string
  /** key columns in order, and how a cursor key value is turned into each column's type */
  keys: { col: string; param: (n: number) => string }[]
  select: string
}

const QUERIES: Record<SyncKind, KindQuery> = {
  readings: {
    // through the commit log (migration 0019): each log row names a device, a metric, a transaction and the time range
    // it wrote; the samples with that commit_seq in that range are the rows it logged
    from: `sample_commits c JOIN devices d ON d.device_key = c.device_key
      JOIN samples s ON s.device_key = c.device_key AND s.metric = c.metric AND s.commit_seq = c.commit_seq
        AND s.time BETWEEN c.t_min AND c.t_max
      WHERE d.user_id = $1`,
    seq: 'c.commit_seq',
    keys: [
      { col: 's.device_key', param: (n) => `$${n}::int4` },
      { col: 's.metric', param: (n) => `$${n}::int2` },
      // time to the microsecond, by integer arithmetic (no float rounding at the page boundary)
      { col: 's.time', param: (n) => `('epoch'::timestamptz + $${n}::bigint * interval '1 microsecond')` },
    ],
    select: `s.device_key AS k0, s.metric::int AS k1, (extract(epoch FROM s.time) * 1000000)::bigint::text AS k2,
             d.device_id AS device, s.value`,
  },
  alerts: {
    from: 'alerts a WHERE a.user_id = $1',
    seq: 'a.commit_seq',
    keys: [{ col: 'a.id', param: (n) => `$${n}::uuid` }],
    select: `a.id::text AS k0, a.kind, a.severity, a.event_id, a.device_id,
             (extract(epoch FROM a.opened_at) * 1000)::float8 AS opened_at,
             (extract(epoch FROM a.resolved_at) * 1000)::float8 AS resolved_at, a.evidence`,
  },
  recommendations: {
    from: 'recommendations r WHERE r.user_id = $1',
    seq: 'r.commit_seq',
    keys: [{ col: 'r.id', param: (n) => `$${n}::text` }],
    select: 'r.id AS k0, r.payload',
  },
  consents: {
    from: 'consents c WHERE c.user_id = $1',
    seq: 'c.commit_seq',
    keys: [{ col: 'c.id', param: (n) => `$${n}::bigint` }],
    select: `c.id::text AS k0, c.purpose, c.event_id, c.granted, c.version, c.source,
             (extract(epoch FROM c.at) * 1000)::float8 AS at`,
  },
}

export interface OrderedRow {
  pos: Position
  kind: SyncKind
  row: Record<string, unknown>
}

/**
 * The horizon: below it every transaction that can write this database has finished. It is the smallest id still in
 * progress in a snapshot, or the snapshot's xmax when none is. Transaction ids are server-wide, so an id that
 * pg_stat_activity shows as another database's transaction does not hold the horizon back (a long write in a
 * neighbouring database must not stall every app here); an id it cannot place (stats not visible, a prepared
 * transaction) does, which is only ever late, never wrong. Rows are read by later statements: what finished before
 * the horizon is visible to them.
 *
 * Two statements, the activity first: a statement's snapshot is taken before it reads pg_stat_activity, so in one
 * statement a neighbour's transaction that ended in between was in the snapshot but no longer in the activity, and
 * held the horizon back; with 8 writers in another database that was 6 % of the horizons taken right after a commit
 * (an app that uploaded and synced did not see its reading). Read first, an id of the activity list is another
 * database's for good; an id in the later snapshot that the list lacks began after the list was read (so after any
 * commit acknowledged before) or belongs here.
 */
export async function horizon(q: Queryable): Promise<number> {
  const others = await q.query<{ x: string[] }>(
    `SELECT coalesce(array_agg(a.backend_xid::text), '{}') AS x FROM pg_stat_activity a
     WHERE a.backend_xid IS NOT NULL
       AND a.datid IS DISTINCT FROM (SELECT oid FROM pg_database WHERE datname = current_database())`,
  )
  const r = await q.query<{ h: string }>(
    `WITH s AS (SELECT pg_current_snapshot() AS snap)
     SELECT least(pg_snapshot_xmax(s.snap), (
              SELECT min(x) FROM pg_snapshot_xip(s.snap) AS x
              WHERE NOT (x::text::bigint % 4294967296 = ANY($1::bigint[]))))::text AS h
     FROM s`,
    [others.rows[0]?.x ?? []],
  )
  return Number(r.rows[0]?.h ?? 0)
}

/** One kind's rows after the cursor and below the horizon, in commit order, at most `limit`. */
export async function rowsAfter(
  q: Queryable,
  kind: SyncKind,
  userId: string,
  cursor: Position,
  h: number,
  limit: number,
): Promise<OrderedRow[]> {
  const k = SYNC_KINDS.indexOf(kind)
  const spec = QUERIES[kind]
  const params: unknown[] = [userId, String(cursor.seq), String(h), limit]
  let after: string
  if (k > cursor.kind) after = `${spec.seq} >= $2::bigint`
  else if (k < cursor.kind || cursor.key.length !== spec.keys.length) after = `${spec.seq} > $2::bigint`
  else {
    const cols = spec.keys.map((c) => c.col).join(', ')
    const vals = spec.keys.map((c, i) => c.param(5 + i)).join(', ')
    params.push(...cursor.key.map(String))
    after = `${spec.seq} >= $2::bigint AND (${spec.seq} > $2::bigint OR (${cols}) > (${vals}))`
  }
  const order = [spec.seq, ...spec.keys.map((c) => c.col)].join(', ')
  const res = await q.query<Record<string, unknown>>(
    `SELECT ${spec.seq}::text AS seq, ${spec.select} FROM ${spec.from}
       AND ${after} AND ${spec.seq} < $3::bigint ORDER BY ${order} LIMIT $4`,
    params,
  )
  return res.rows.map((r) => {
    const key: (number | string)[] = []
    for (let i = 0; i < spec.keys.length; i++) {
      const v = r[`k${i}`]
      key.push(typeof v === 'number' ? v : String(v))
    }
    return { pos: { seq: Number(r['seq']), kind: k, key }, kind, row: r }
  })
}

/**
 * A page: the first `limit` rows after the cursor over all asked kinds, and the cursor after it. When the page holds
 * everything there is, the cursor moves to the horizon, so the next request starts where this snapshot's knowledge
 * ends (never past a transaction still running).
 */
export async function pageAfter(
  q: Queryable,
  userId: string,
  kinds: readonly SyncKind[],
  cursor: Position,
  limit: number,
): Promise<{ rows: OrderedRow[]; next: Position; more: boolean }> {
  const h = await horizon(q)
  const lists: OrderedRow[][] = []
  for (const kind of SYNC_KINDS)
    if (kinds.includes(kind)) lists.push(await rowsAfter(q, kind, userId, cursor, h, limit + 1))
  const merged = lists.flat().sort((a, b) => a.pos.seq - b.pos.seq || a.pos.kind - b.pos.kind)
  // sort is stable: rows of one kind and seq keep the key order the database gave them
  const more = merged.length > limit
  const rows = merged.slice(0, limit)
  let next: Position
  if (more) next = (rows[rows.length - 1] as OrderedRow).pos
  else if (h - 1 > cursor.seq || (h - 1 === cursor.seq && cursor.kind !== DONE_KIND))
    next = { seq: h - 1, kind: DONE_KIND, key: [] }
  else next = cursor
  return { rows, next, more }
}
