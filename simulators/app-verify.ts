// App-side convergence (issue #14): each app's local copy (app-copy.ts) against the database for its user. Everything
// committed up to the app's final cursor must be in the copy (for alerts, in its newest state), every reading of
// the run too (all were committed before the final catch-up), nothing may be in the copy that the database does not
// hold, and no sync may have returned a row twice. missing, extra and duplicated must all be 0.
import { readingId } from '../src/outputs/sync.js'
import { decodeCursor } from '../src/outputs/sync-order.js'
import type { Queryable } from '../src/store/db.js'
import type { AppCopyWire } from './app-copy.js'

export interface AppConvergence {
  status: 'ok' | 'failed' | 'skipped'
  reason: string | null
  apps: number
  /** rows in the database the app does not have (or has in an older state) */
  missing: number
  /** rows the app has that the database does not */
  extra: number
  /** rows a sync returned again in the same state */
  duplicated: number
  /** apps whose final catch-up did not reach the end */
  incomplete: number
  /** rows the apps hold, summed */
  rows: number
  syncs: number
  /** the apps with any difference, worst first (at most 20) */
  failing: { userId: string; missing: number; extra: number; duplicated: number; incomplete: boolean }[]
}

interface DbRow {
  key: string
  version: string
  seq: number
  reading: boolean
}

export async function compareAppCopies(q: Queryable, copies: readonly AppCopyWire[]): Promise<AppConvergence> {
  const users = copies.map((c) => c.userId)
  const rows = new Map<string, DbRow[]>()
  const add = (user: string, r: DbRow) => {
    let list = rows.get(user)
    if (!list) {
      list = []
      rows.set(user, list)
    }
    list.push(r)
  }
  const samples = await q.query<{ user_id: string; device_id: string; metric: number; us: string; seq: string }>(
    `SELECT d.user_id, d.device_id, s.metric::int AS metric, (extract(epoch FROM s.time) * 1000000)::bigint::text AS us,
            s.commit_seq::text AS seq
     FROM samples s JOIN devices d USING (device_key) WHERE d.user_id = ANY($1::text[])`,
    [users],
  )
  for (const r of samples.rows)
    add(r.user_id, {
      key: `r:${readingId(r.device_id, Number(r.metric), r.us)}`,
      version: '',
      seq: Number(r.seq),
      reading: true,
    })
  const alerts = await q.query<{ user_id: string; id: string; open: boolean; seq: string }>(
    `SELECT user_id, id::text AS id, resolved_at IS NULL AS open, commit_seq::text AS seq FROM alerts
     WHERE user_id = ANY($1::text[])`,
    [users],
  )
  for (const r of alerts.rows)
    add(r.user_id, { key: `a:${r.id}`, version: r.open ? 'opened' : 'resolved', seq: Number(r.seq), reading: false })
  const consents = await q.query<{ user_id: string; id: string; seq: string }>(
    `SELECT user_id, id::text AS id, commit_seq::text AS seq FROM consents WHERE user_id = ANY($1::text[])`,
    [users],
  )
  for (const r of consents.rows) add(r.user_id, { key: `c:${r.id}`, version: '', seq: Number(r.seq), reading: false })
  const recs = await q.query<{ user_id: string; id: string; seq: string }>(
    `SELECT user_id, id, commit_seq::text AS seq FROM recommendations WHERE user_id = ANY($1::text[])`,
    [users],
  )
  for (const r of recs.rows) add(r.user_id, { key: `n:${r.id}`, version: '', seq: Number(r.seq), reading: false })

  const out = emptyConvergence('ok', null, copies.length)
  for (const c of copies) {
    let through = -1
    try {
      through = decodeCursor(c.cursor).seq
    } catch {
      // a cursor the broker never made: nothing counts as delivered
    }
    const have = new Map(c.items)
    const inDb = new Set<string>()
    let missing = 0
    for (const r of rows.get(c.userId) ?? []) {
      inDb.add(r.key)
      // Outputs made after the app's last sync (an alert at the very end) are not expected; readings all are.
      if (r.seq > through && !r.reading) continue
      if (have.get(r.key) !== r.version) missing++
    }
    let extra = 0
    for (const k of have.keys()) if (!inDb.has(k)) extra++
    out.missing += missing
    out.extra += extra
    out.duplicated += c.duplicates
    out.rows += have.size
    out.syncs += c.syncs
    if (c.incomplete) out.incomplete++
    if (missing + extra + c.duplicates > 0 || c.incomplete)
      out.failing.push({ userId: c.userId, missing, extra, duplicated: c.duplicates, incomplete: c.incomplete })
  }
  out.failing.sort((a, b) => b.missing + b.extra + b.duplicated - (a.missing + a.extra + a.duplicated))
  out.failing = out.failing.slice(0, 20)
  if (out.missing + out.extra + out.duplicated + out.incomplete > 0) out.status = 'failed'
  return out
}

/** A comparison with nothing counted yet: the start of compareAppCopies, or the report of one that did not run. */
export function emptyConvergence(
  status: AppConvergence['status'],
  reason: string | null,
  apps: number,
): AppConvergence {
  return { status, reason, apps, missing: 0, extra: 0, duplicated: 0, incomplete: 0, rows: 0, syncs: 0, failing: [] }
}
