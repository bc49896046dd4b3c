// What holds a person's data, in ONE declarative list: each table, how the person's rows are found in it (by their
// user id, by the integer keys of their devices, by their devices' ids) and what erasure does with them. A new table
// that holds personal data is added here and nowhere else; test/integration/erasure.test.ts fails when any table in
// the database has a user_id, device_key or device_id column this plan does not cover. Continuous aggregates are
// found at run time (their materialisation hypertables), so a new rollup needs no entry.
//
// Kept on purpose (docs/privacy.md "Erasure"): audit_log rows (pseudonyms only; the hash chain must not break, and the
// erasure's own row is the controller's proof of it, GDPR Art. 5(2), 17(3)(b)); revoked_certs fingerprints, with the
// device id removed, so the certificate is refused forever; one consent tombstone without any id.

/** How rows are found: the user id, or the user's devices by key (telemetry) or by id (text references). */
export type Finder = 'user_id' | 'device_key' | 'device_id'

export type EraseAction =
  /** DELETE the rows found */
  | 'delete'
  /** a hypertable: one device key at a time (equality), compressed batches dropped whole without decompression */
  | 'per-device'
  /** the append-only consent history: eraseConsentRows (delete under the erasure exception, one tombstone) */
  | 'consent'
  /** the row stays, the device id in it is set to NULL (revoked_certs: the fingerprint alone keeps refusing) */
  | 'detach'

export interface PlanEntry {
  table: string
  /** rows matching any of these columns are the person's */
  by: readonly Finder[]
  action: EraseAction
  /** made by a migration another feature owns (or that needs TimescaleDB): skipped where the table is absent */
  optional?: true
}

/**
 * In the order erased, inside one transaction: telemetry and outputs first, the registry last (devices and users are
 * what the rows above are found by, and participants/devices refer to users).
 */
export const ERASURE_PLAN: readonly PlanEntry[] = [
  { table: 'samples', by: ['device_key'], action: 'per-device' },
  { table: 'positions', by: ['device_key'], action: 'per-device' },
  // the commit log of readings: which transaction wrote which device's metric, over which time range (migration 0019)
  { table: 'sample_commits', by: ['device_key'], action: 'delete' },
  { table: 'device_status', by: ['device_key'], action: 'delete' },
  // the newest committed fix per device, distance is derived from it (migration 0014)
  { table: 'device_tracks', by: ['device_key'], action: 'delete', optional: true },
  // which batches were signed (migration 0016)
  { table: 'signed_batches', by: ['device_key'], action: 'delete', optional: true },
  { table: 'dead_letters', by: ['device_id'], action: 'delete' },
  { table: 'alerts', by: ['user_id', 'device_id'], action: 'delete' },
  // src/insights (migration 0008): features, rule episodes and the recommendations themselves
  { table: 'recommendations', by: ['user_id'], action: 'delete', optional: true },
  { table: 'daily_features', by: ['user_id'], action: 'delete', optional: true },
  { table: 'insight_episodes', by: ['user_id'], action: 'delete', optional: true },
  // preferences synced across a user's devices, their privacy zones among them (migration 0010)
  { table: 'user_preferences', by: ['user_id'], action: 'delete', optional: true },
  // push deliveries for offline apps, pending, delivered or dead-lettered (migration 0015)
  { table: 'webhook_deliveries', by: ['user_id'], action: 'delete', optional: true },
  { table: 'consents', by: ['user_id'], action: 'consent' },
  { table: 'participants', by: ['user_id'], action: 'delete' },
  { table: 'people', by: ['user_id'], action: 'delete' },
  { table: 'revoked_certs', by: ['device_id'], action: 'detach' },
  { table: 'devices', by: ['user_id', 'device_key', 'device_id'], action: 'delete' },
  { table: 'users', by: ['user_id'], action: 'delete' },
]

/** Tables that hold ids of people on purpose and are not erased (the coverage test knows them by name). */
export const KEPT_TABLES: ReadonlyMap<string, string> = new Map([
  ['audit_log', 'pseudonyms only, hash-chained: accountability for processing, the erasure included'],
])

/** The finder columns of a table that hold a person's ids. */
export const FINDER_COLUMNS: readonly Finder[] = ['user_id', 'device_key', 'device_id']

export interface ErasedDevice {
  deviceKey: number
  deviceId: string
  fingerprint: string | null
}

/**
 * The WHERE clause of a set-wise statement (delete, detach) and its parameters: $1 the user id, then the device keys
 * and ids as arrays, only those the entry uses. Table names come from this file, never from input.
 */
export function whereOf(
  by: readonly Finder[],
  userId: string,
  devices: readonly ErasedDevice[],
): { where: string; params: unknown[] } {
  const parts: string[] = []
  const params: unknown[] = []
  for (const f of by) {
    if (f === 'user_id') {
      params.push(userId)
      parts.push(`user_id = $${params.length}::text`)
    } else if (f === 'device_key') {
      params.push(devices.map((d) => d.deviceKey))
      parts.push(`device_key = ANY($${params.length}::int[])`)
    } else {
      params.push(devices.map((d) => d.deviceId))
      parts.push(`device_id = ANY($${params.length}::text[])`)
    }
  }
  return { where: parts.join(' OR '), params }
}

/** Continuous aggregates with a finder column in their materialisation hypertable (TimescaleDB only). */
export const CAGG_SQL = `SELECT ca.view_name AS view, ca.materialization_hypertable_schema AS schema,
    ca.materialization_hypertable_name AS name,
    (SELECT string_agg(c.column_name, ',' ORDER BY c.column_name) FROM information_schema.columns c
      WHERE c.table_schema = ca.materialization_hypertable_schema AND c.table_name = ca.materialization_hypertable_name
        AND c.column_name IN ('user_id', 'device_key', 'device_id')) AS finders
  FROM timescaledb_information.continuous_aggregates ca ORDER BY ca.view_name`

/**
 * The compressed chunks of a hypertable, and whether its batches are segmented by device_key (then a batch holds one
 * device's rows and can be deleted whole). Deleting those batches in the compressed chunk itself is what TimescaleDB
 * ≥ 2.17 does for a DELETE whose predicate covers segmentby columns, except that a row-level trigger on the hypertable
 * forces decompression, and every hypertable under a continuous aggregate has one (its invalidation trigger). The
 * rollups are erased by device in their own materialisation, so no invalidation is needed (docs/privacy.md).
 */
export const COMPRESSED_CHUNKS_SQL = `SELECT format('%I.%I', cc.schema_name, cc.table_name) AS chunk
  FROM _timescaledb_catalog.chunk c
  JOIN _timescaledb_catalog.chunk cc ON cc.id = c.compressed_chunk_id
  JOIN _timescaledb_catalog.hypertable h ON h.id = c.hypertable_id
  WHERE h.schema_name = $1 AND h.table_name = $2 AND NOT c.dropped`

export const SEGMENT_BY_DEVICE_SQL = `SELECT EXISTS (SELECT 1 FROM timescaledb_information.compression_settings
  WHERE hypertable_schema = $1 AND hypertable_name = $2 AND attname = 'device_key'
    AND segmentby_column_index IS NOT NULL) AS segmented`
