// The webhook_deliveries table (migrations/0015_webhooks.sql): what the worker, the sweep and the CLI do with it.
// Claims (owner, claimed_until) let several nodes share the table without two of them sending the same row.
import type { Queryable } from '../../store/db.js'

export type DeliveryKind = 'alert' | 'recommendation'

export interface StoredDelivery {
  id: string
  userId: string
  kind: DeliveryKind
  body: string
  attempts: number
  /** epoch ms */
  nextAttemptAt: number
  createdAt: number
}

export interface DeadLetter {
  id: string
  userId: string
  kind: DeliveryKind
  attempts: number
  lastError: string | null
  createdAt: string
  deadAt: string | null
}

interface Row {
  id: string
  user_id: string
  kind: DeliveryKind
  body: string
  attempts: number
  next_ms: string | number
  created_ms: string | number
}

const COLUMNS = `id, user_id, kind, body, attempts,
  (extract(epoch FROM next_attempt_at) * 1000)::bigint AS next_ms,
  (extract(epoch FROM created_at) * 1000)::bigint AS created_ms`

const toDelivery = (r: Row): StoredDelivery => ({
  id: r.id,
  userId: r.user_id,
  kind: r.kind,
  body: r.body,
  attempts: r.attempts,
  nextAttemptAt: Number(r.next_ms),
  createdAt: Number(r.created_ms),
})

/** Delivered rows are kept this long, so a redelivered recommendation (same id) is not pushed twice. */
const KEEP_DELIVERED = '7 days'

export class WebhookStore {
  constructor(
    private readonly db: Queryable,
    private readonly node: string,
    private readonly claimMs: number,
  ) {}

  /** false: the dedupe key is taken (already pushed, or being pushed). `claim` false leaves it to the next sweep. */
  async insert(
    d: { id: string; dedupeKey: string; userId: string; kind: DeliveryKind; body: string; createdAt: number },
    claim: boolean,
  ): Promise<boolean> {
    const res = await this.db.query(
      `INSERT INTO webhook_deliveries (id, dedupe_key, user_id, kind, body, created_at, owner, claimed_until)
       VALUES ($1, $2, $3, $4, $5, to_timestamp($6 / 1000.0), $7,
               CASE WHEN $7::text IS NULL THEN NULL ELSE now() + $8::int * interval '1 millisecond' END)
       ON CONFLICT (dedupe_key) DO NOTHING`,
      [d.id, d.dedupeKey, d.userId, d.kind, d.body, d.createdAt, claim ? this.node : null, this.claimMs],
    )
    return res.rowCount > 0
  }

  async delivered(id: string): Promise<void> {
    await this.db.query(
      `UPDATE webhook_deliveries SET state = 'delivered', attempts = attempts + 1, finished_at = now(), owner = NULL,
         claimed_until = NULL, last_error = NULL WHERE id = $1`,
      [id],
    )
  }

  async retryAt(id: string, attempts: number, at: number, error: string): Promise<void> {
    await this.db.query(
      `UPDATE webhook_deliveries SET attempts = $2, next_attempt_at = to_timestamp($3 / 1000.0), last_error = $4,
         claimed_until = now() + $5::int * interval '1 millisecond' WHERE id = $1`,
      [id, attempts, at, error.slice(0, 500), this.claimMs],
    )
  }

  async dead(id: string, attempts: number, error: string): Promise<void> {
    await this.db.query(
      `UPDATE webhook_deliveries SET state = 'dead', attempts = $2, last_error = $3, finished_at = now(), owner = NULL,
         claimed_until = NULL WHERE id = $1`,
      [id, attempts, error.slice(0, 500)],
    )
  }

  /** Withheld at send time (consent withdrawn since): nothing about it is kept. */
  async remove(id: string): Promise<void> {
    await this.db.query('DELETE FROM webhook_deliveries WHERE id = $1', [id])
  }

  /**
   * Takes pending rows nobody holds (claim lapsed, never claimed; with `leftBefore`, also rows created before that
   * instant whoever claimed them: a single-node broker after a restart takes over its predecessor's), up to
   * `limit`, soonest first. Rows this node holds are
   * renewed at every sweep, so they are never taken here a second time.
   */
  async claim(limit: number, leftBefore: number | null): Promise<StoredDelivery[]> {
    if (limit <= 0) return []
    const res = await this.db.query<Row>(
      `UPDATE webhook_deliveries SET owner = $1, claimed_until = now() + $2::int * interval '1 millisecond'
       WHERE id IN (
         SELECT id FROM webhook_deliveries
         WHERE state = 'pending'
           AND (created_at < to_timestamp($4::bigint / 1000.0) OR claimed_until IS NULL OR claimed_until < now())
         ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
       RETURNING ${COLUMNS}`,
      [this.node, this.claimMs, limit, leftBefore ?? 0],
    )
    return res.rows.map(toDelivery)
  }

  /** Extends this node's claims on the rows it holds (those not held are released, for the others to take). */
  async renew(held: readonly string[]): Promise<void> {
    await this.db.query(
      `UPDATE webhook_deliveries
       SET claimed_until = CASE WHEN id = ANY($3::uuid[]) THEN now() + $2::int * interval '1 millisecond' ELSE NULL END,
           owner = CASE WHEN id = ANY($3::uuid[]) THEN owner ELSE NULL END
       WHERE owner = $1 AND state = 'pending'`,
      [this.node, this.claimMs, held],
    )
  }

  /** Hands this node's pending rows back at shutdown: the next process (or another node) sends them at once. */
  async release(): Promise<void> {
    await this.db.query(
      `UPDATE webhook_deliveries SET owner = NULL, claimed_until = NULL WHERE owner = $1 AND state = 'pending'`,
      [this.node],
    )
  }

  async prune(): Promise<void> {
    await this.db.query(
      `DELETE FROM webhook_deliveries WHERE state = 'delivered' AND finished_at < now() - interval '${KEEP_DELIVERED}'`,
    )
  }

  async countDead(): Promise<number> {
    const res = await this.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM webhook_deliveries WHERE state = 'dead'`,
    )
    return res.rows[0]?.n ?? 0
  }
}

/** The dead letters, newest first (the CLI; no bodies: they are for the push service, not for the console). */
export async function listDeadLetters(db: Queryable, limit = 100): Promise<{ total: number; rows: DeadLetter[] }> {
  const total = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM webhook_deliveries WHERE state = 'dead'`)
  const res = await db.query<{
    id: string
    user_id: string
    kind: DeliveryKind
    attempts: number
    last_error: string | null
    created_at: Date | string
    finished_at: Date | string | null
  }>(
    `SELECT id, user_id, kind, attempts, last_error, created_at, finished_at FROM webhook_deliveries
     WHERE state = 'dead' ORDER BY finished_at DESC, id LIMIT $1`,
    [limit],
  )
  const iso = (v: Date | string) => new Date(v).toISOString()
  return {
    total: total.rows[0]?.n ?? 0,
    rows: res.rows.map((r) => ({
      id: r.id,
      userId: r.user_id,
      kind: r.kind,
      attempts: r.attempts,
      lastError: r.last_error,
      createdAt: iso(r.created_at),
      deadAt: r.finished_at ? iso(r.finished_at) : null,
    })),
  }
}

/** Dead letters back to pending with a fresh attempt budget (after the endpoint was fixed); returns how many. */
export async function retryDeadLetters(db: Queryable, ids: readonly string[] | 'all'): Promise<number> {
  const res = await db.query(
    `UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_attempt_at = now(), finished_at = NULL,
       owner = NULL, claimed_until = NULL
     WHERE state = 'dead' AND ($1::boolean OR id = ANY($2::uuid[]))`,
    [ids === 'all', ids === 'all' ? [] : ids],
  )
  return res.rowCount
}
