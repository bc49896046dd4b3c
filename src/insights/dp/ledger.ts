// The per-event ε ledger (migrations/0009_dp.sql). A release is published only after its ε is spent here, in the same
// transaction that records it; a spend that would pass the day's budget changes nothing and is refused.
//
// The day is the database's UTC date (now() of the transaction), so every process agrees on it. Atomicity: the ledger
// row is created if missing (ON CONFLICT DO NOTHING), then one UPDATE … WHERE epsilon_spent + ε <= budget adds the ε.
// On PostgreSQL a second writer's UPDATE waits on the row lock and re-evaluates its WHERE against the committed row,
// so concurrent spends serialise and the sum never exceeds the budget; the embedded store has a single session.
import type { Db, Queryable } from '../../store/db.js'
import { formatEpsilon, type MicroEpsilon, parseNumeric } from './epsilon.js'

export type Series = 'broker' | 'operator'

export interface LedgerDay {
  day: string
  spent: MicroEpsilon
  budget: MicroEpsilon
}

export type SpendOutcome<T> =
  | ({ ok: true; releaseId: string; value: T } & LedgerDay)
  | ({ ok: false; reason: 'budget' | 'interval' } & LedgerDay)

export interface SpendRequest<T> {
  eventId: string
  epsilon: MicroEpsilon
  budget: MicroEpsilon
  series: Series
  /** broker releases: refuse if any broker released for this event less than this long ago (another process did) */
  minIntervalMs?: number
  /** the record to store, built once the new total is known (it carries ε spent and remaining) */
  build(after: LedgerDay): T
}

const TODAY = `(now() AT TIME ZONE 'UTC')::date`

export async function spend<T>(db: Db, req: SpendRequest<T>): Promise<SpendOutcome<T>> {
  const eps = formatEpsilon(req.epsilon)
  const budget = formatEpsilon(req.budget)
  return db.transaction(async (q) => {
    await q.query(`INSERT INTO dp_ledger (event_id, day) VALUES ($1, ${TODAY}) ON CONFLICT DO NOTHING`, [req.eventId])
    const interval = req.series === 'broker' && req.minIntervalMs ? req.minIntervalMs : null
    const up = await q.query<{ spent: string; day: string }>(
      `UPDATE dp_ledger SET epsilon_spent = epsilon_spent + $2::numeric, releases = releases + 1,
              last_broker_at = CASE WHEN $4 = 'broker' THEN now() ELSE last_broker_at END
        WHERE event_id = $1 AND day = ${TODAY}
          AND epsilon_spent + $2::numeric <= $3::numeric
          AND ($5::float8 IS NULL OR last_broker_at IS NULL OR last_broker_at <= now() - $5::float8 * interval '1 millisecond')
        RETURNING epsilon_spent::text AS spent, day::text AS day`,
      [req.eventId, eps, budget, req.series, interval],
    )
    const row = up.rows[0]
    if (!row) {
      const cur = await q.query<{ spent: string; day: string; fits: boolean }>(
        `SELECT epsilon_spent::text AS spent, day::text AS day, epsilon_spent + $2::numeric <= $3::numeric AS fits
           FROM dp_ledger WHERE event_id = $1 AND day = ${TODAY}`,
        [req.eventId, eps, budget],
      )
      const c = cur.rows[0] as { spent: string; day: string; fits: boolean }
      return {
        ok: false,
        reason: c.fits ? 'interval' : 'budget',
        day: c.day,
        spent: parseNumeric(c.spent),
        budget: req.budget,
      }
    }
    const after: LedgerDay = { day: row.day, spent: parseNumeric(row.spent), budget: req.budget }
    const value = req.build(after)
    const ins = await q.query<{ id: string }>(
      `INSERT INTO dp_releases (event_id, day, epsilon, series, spent_after, payload)
       VALUES ($1, $2::date, $3::numeric, $4, $5::numeric, $6::jsonb) RETURNING id::text AS id`,
      [req.eventId, row.day, eps, req.series, row.spent, JSON.stringify(value)],
    )
    return { ok: true, releaseId: (ins.rows[0] as { id: string }).id, value, ...after }
  })
}

/** Today's figures for an event (nothing spent if no row yet). */
export async function today(q: Queryable, eventId: string, budget: MicroEpsilon): Promise<LedgerDay> {
  const res = await q.query<{ spent: string | null; day: string }>(
    `SELECT (SELECT epsilon_spent::text FROM dp_ledger WHERE event_id = $1 AND day = ${TODAY}) AS spent,
            ${TODAY}::text AS day`,
    [eventId],
  )
  const r = res.rows[0] as { spent: string | null; day: string }
  return { day: r.day, spent: r.spent === null ? 0 : parseNumeric(r.spent), budget }
}

export interface LedgerReport {
  eventId: string
  budgetPerDay: string
  days: { day: string; spent: string; remaining: string; releases: number }[]
  recent: { id: string; releasedAt: string; series: Series; epsilon: string; spentAfter: string }[]
}

/** `pulsegate stats ledger`: every day's total and the latest releases. */
export async function ledgerReport(q: Queryable, eventId: string, budget: MicroEpsilon, recent = 20) {
  const days = await q.query<{ day: string; spent: string; releases: number }>(
    `SELECT day::text AS day, epsilon_spent::text AS spent, releases FROM dp_ledger WHERE event_id = $1 ORDER BY day DESC`,
    [eventId],
  )
  const rel = await q.query<{ id: string; at: string; series: Series; epsilon: string; spent_after: string }>(
    `SELECT id::text AS id, to_char(released_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS at, series,
            epsilon::text AS epsilon, spent_after::text AS spent_after
       FROM dp_releases WHERE event_id = $1 ORDER BY released_at DESC, id DESC LIMIT $2`,
    [eventId, recent],
  )
  const report: LedgerReport = {
    eventId,
    budgetPerDay: formatEpsilon(budget),
    days: days.rows.map((d) => ({
      day: d.day,
      spent: formatEpsilon(parseNumeric(d.spent)),
      remaining: formatEpsilon(Math.max(0, budget - parseNumeric(d.spent))),
      releases: Number(d.releases),
    })),
    recent: rel.rows.map((r) => ({
      id: r.id,
      releasedAt: r.at,
      series: r.series,
      epsilon: formatEpsilon(parseNumeric(r.epsilon)),
      spentAfter: formatEpsilon(parseNumeric(r.spent_after)),
    })),
  }
  return report
}

/** The latest broker release of each of these events (the retained messages to restore after a restart). */
export async function latestPayloads(q: Queryable, eventIds: readonly string[]): Promise<Map<string, unknown>> {
  const out = new Map<string, unknown>()
  if (eventIds.length === 0) return out
  const res = await q.query<{ event_id: string; payload: unknown }>(
    `SELECT DISTINCT ON (event_id) event_id, payload FROM dp_releases
      WHERE event_id = ANY($1::text[]) AND series = 'broker' ORDER BY event_id, released_at DESC, id DESC`,
    [eventIds],
  )
  for (const r of res.rows) out.set(r.event_id, typeof r.payload === 'string' ? JSON.parse(r.payload) : r.payload)
  return out
}
