// The audit chain's canonical row and hashes, in one place: appends, `audit verify` and the bench all go through
// these functions, so what verify recomputes is byte for byte what was hashed when the row was appended.
import crypto from 'node:crypto'
import { isValidId } from '../topics/grammar.js'
import type { AuditActor, AuditEntry } from './audit-types.js'

/** prev_hash of seq 1 */
export const GENESIS_HASH: Buffer = Buffer.alloc(32)
/** details are "small JSON facts"; a caller handing over a payload is a bug, refused before it reaches the chain */
export const MAX_DETAILS_BYTES = 16 * 1024
const ACTOR_ROLES: ReadonlySet<AuditActor['role']> = new Set([
  'device',
  'bridge',
  'app',
  'medic',
  'admin',
  'cli',
  'system',
])
const ACTION_RE = /^[a-z][a-z0-9_]*(?:\.[A-Za-z0-9_]+)*$/
const PURPOSE_RE = /^[a-z][a-z0-9_.-]*$/

export class AuditEntryError extends Error {}

/** A row of audit_log as hashed: what is appended and what verify reads back. */
export interface AuditRow {
  seq: number
  /** ISO 8601, UTC, microseconds (timestamptz's precision): `2025-01-31T12:00:00.123000Z` */
  at: string
  actorRole: string
  actorId: string | null
  action: string
  subject: string | null
  purpose: string | null
  /** canonical JSON text of the details, stored as is */
  details: string
}

export type PreparedRow = Omit<AuditRow, 'seq'>

/** A Date as the canonical `at`: what to_char(at AT TIME ZONE 'UTC', …US…) gives back for it. */
export function isoMicros(d: Date): string {
  const iso = d.toISOString()
  if (!/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(iso)) throw new AuditEntryError(`time out of range: ${iso}`)
  return `${iso.slice(0, 23)}000Z`
}

/** SQL for the canonical `at` of a timestamptz column. */
export function atSql(column: string): string {
  return `to_char(${column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')`
}

/**
 * JSON with object keys sorted by UTF-16 code units at every level and numbers and strings as JSON.stringify writes
 * them (the RFC 8785 "JCS" rules). Follows JSON.stringify otherwise (toJSON, undefined members dropped, NaN → null),
 * except that bigints become decimal strings instead of throwing: an audit row is never lost to a detail's type.
 */
export function canonicalJson(value: unknown, depth = 0): string {
  if (depth > 32) throw new AuditEntryError('details nest too deep (or are circular)')
  if (value === null) return 'null'
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value)
    case 'number':
      return Number.isFinite(value) ? JSON.stringify(value) : 'null'
    case 'boolean':
      return value ? 'true' : 'false'
    case 'bigint':
      return JSON.stringify(value.toString())
    case 'object': {
      const withToJson = value as { toJSON?: () => unknown }
      if (typeof withToJson.toJSON === 'function') return canonicalJson(withToJson.toJSON(), depth + 1)
      if (Array.isArray(value)) {
        const items = value.map((v) =>
          v === undefined || typeof v === 'function' || typeof v === 'symbol' ? 'null' : canonicalJson(v, depth + 1),
        )
        return `[${items.join(',')}]`
      }
      const obj = value as Record<string, unknown>
      const parts: string[] = []
      for (const key of Object.keys(obj).sort()) {
        const v = obj[key]
        if (v === undefined || typeof v === 'function' || typeof v === 'symbol') continue
        parts.push(`${JSON.stringify(key)}:${canonicalJson(v, depth + 1)}`)
      }
      return `{${parts.join(',')}}`
    }
    default:
      throw new AuditEntryError(`details cannot hold a ${typeof value}`)
  }
}

/**
 * The canonical row, version 1: a JSON object with the keys in exactly this order, details inlined as stored.
 * `{"v":1,"seq":7,"at":"…Z","actor_role":"admin","actor_id":"ops1","action":"rpc.revokeDevice","subject":null,
 *   "purpose":null,"details":{"deviceId":"trk-1"}}`
 */
export function canonicalRow(r: AuditRow): string {
  const s = JSON.stringify
  return (
    `{"v":1,"seq":${r.seq},"at":${s(r.at)},"actor_role":${s(r.actorRole)},"actor_id":${s(r.actorId)},` +
    `"action":${s(r.action)},"subject":${s(r.subject)},"purpose":${s(r.purpose)},"details":${r.details}}`
  )
}

/** hash = SHA-256(prev_hash ‖ UTF-8(canonical row)) */
export function chainHash(prev: Buffer, r: AuditRow): Buffer {
  return crypto.createHash('sha256').update(prev).update(canonicalRow(r), 'utf8').digest()
}

/** Checks an entry (pseudonyms only: ids must be ids, never names or e-mails) and fixes its time and details text. */
export function prepareEntry(e: AuditEntry, at: Date): PreparedRow {
  if (!ACTOR_ROLES.has(e.actor.role)) throw new AuditEntryError(`unknown actor role ${JSON.stringify(e.actor.role)}`)
  if (e.actor.id !== null && !isValidId(e.actor.id))
    throw new AuditEntryError('actor id must be a pseudonymous id ([A-Za-z0-9_-]{1,64})')
  if (e.subject !== null && !isValidId(e.subject))
    throw new AuditEntryError('subject must be a pseudonymous id ([A-Za-z0-9_-]{1,64})')
  if (e.action.length > 64 || !ACTION_RE.test(e.action))
    throw new AuditEntryError(`invalid action ${JSON.stringify(e.action)}: dotted lower-case words`)
  if (e.purpose !== null && (e.purpose.length > 64 || !PURPOSE_RE.test(e.purpose)))
    throw new AuditEntryError(`invalid purpose ${JSON.stringify(e.purpose)}`)
  const details = canonicalJson(e.details ?? {})
  if (!details.startsWith('{')) throw new AuditEntryError('details must be a JSON object')
  if (Buffer.byteLength(details) > MAX_DETAILS_BYTES)
    throw new AuditEntryError(`details too large (over ${MAX_DETAILS_BYTES} bytes): audit rows hold small facts`)
  return {
    at: isoMicros(at),
    actorRole: e.actor.role,
    actorId: e.actor.id,
    action: e.action,
    subject: e.subject,
    purpose: e.purpose,
    details,
  }
}

/** A signed head of the chain. */
export interface AuditCheckpoint {
  seq: number
  /** hex */
  hash: string
  /** ISO 8601 UTC, microseconds */
  at: string
  /** hex SHA-256 of the signing key's SPKI DER */
  keyId: string
  /** hex Ed25519 signature over checkpointMessage() */
  signature: string
}

/** What a checkpoint signs: fixed text, one field a line. */
export function checkpointMessage(cp: Omit<AuditCheckpoint, 'signature'>): Buffer {
  return Buffer.from(`pulsegate-audit-checkpoint v1\nseq=${cp.seq}\nhash=${cp.hash}\nat=${cp.at}\nkey=${cp.keyId}\n`)
}
