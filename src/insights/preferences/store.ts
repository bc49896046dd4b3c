// The preferences registers in the database (migrations/0010_preferences.sql). A merge is one conditional upsert: a
// row is replaced only by a greater (wall, counter, node, value_key), compared by PostgreSQL itself under the row
// lock, so two broker processes merging edits of the same user at once still end with the join of both.
import type { Queryable } from '../../store/db.js'
import { type Entry, entry, type FieldValue, type PrefsMap } from './crdt.js'

interface Row {
  user_id: string
  field: string
  value_key: string
  wall: number
  counter: number
  node: string
}

export class PreferencesStore {
  constructor(private readonly db: Queryable) {}

  /** Upserts the entries (one per field); returns the fields whose stored entry they replaced or created. */
  async merge(userId: string, entries: PrefsMap): Promise<string[]> {
    if (entries.size === 0) return []
    // Rows in field order: two writers locking the same user's rows always lock them in the same order (no deadlock).
    const fields = [...entries.keys()].sort()
    const params: unknown[] = [userId]
    const rows = fields.map((field) => {
      const e = entries.get(field) as Entry
      const n = params.push(field, e.key, e.hlc.wall, e.hlc.counter, e.hlc.node)
      // text → jsonb in SQL: pg and PGlite would serialise a string bound to a jsonb parameter differently.
      return `($1, $${n - 4}::text, $${n - 3}::text::jsonb, $${n - 3}::text, $${n - 2}::bigint, $${n - 1}::int, $${n}::text)`
    })
    const res = await this.db.query<{ field: string }>(
      `INSERT INTO user_preferences AS p (user_id, field, value, value_key, wall, counter, node)
       VALUES ${rows.join(', ')}
       ON CONFLICT (user_id, field) DO UPDATE
         SET value = excluded.value, value_key = excluded.value_key, wall = excluded.wall,
             counter = excluded.counter, node = excluded.node, updated_at = now()
         WHERE (excluded.wall, excluded.counter, excluded.node, excluded.value_key)
             > (p.wall, p.counter, p.node, p.value_key)
       RETURNING field`,
      params,
    )
    return res.rows.map((r) => r.field).sort()
  }

  /** The stored state of each user asked for (users with no row are absent). */
  async read(userIds: readonly string[]): Promise<Map<string, Map<string, Entry>>> {
    const out = new Map<string, Map<string, Entry>>()
    if (userIds.length === 0) return out
    const res = await this.db.query<Row>(
      `SELECT user_id, field, value_key, wall::float8 AS wall, counter, node
       FROM user_preferences WHERE user_id = ANY($1::text[])`,
      [[...new Set(userIds)]],
    )
    for (const r of res.rows) {
      let map = out.get(r.user_id)
      if (!map) {
        map = new Map()
        out.set(r.user_id, map)
      }
      const value = JSON.parse(r.value_key) as FieldValue
      map.set(r.field, entry(value, { wall: Number(r.wall), counter: Number(r.counter), node: r.node }))
    }
    return out
  }

  /** Erasure (privacy operations): every register of the user. */
  async erase(userId: string): Promise<number> {
    return (await this.db.query('DELETE FROM user_preferences WHERE user_id = $1', [userId])).rowCount
  }
}
