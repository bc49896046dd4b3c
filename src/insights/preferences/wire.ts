// What an app publishes on users/{uid}/preferences (docs/insights.md, "Preferences"):
//   {"node":"phone-1","edits":[{"field":"quietHours","value":{"start":"22:00","end":"07:00"},"hlc":"1764061200000:0:phone-1"}]}
// Every edit carries the device's own HLC stamp. A message is all or nothing: one bad edit refuses the whole message
// (the edits a user made together stay together), and so does a stamp too far ahead of the server's clock, which
// would otherwise let one device with a wrong clock win a field for as long as its clock is ahead.
import { z } from 'zod'
import { ID_RE } from '../../topics/grammar.js'
import { type Entry, entry, type FieldValue, MUTED_PREFIX, ZONE_PREFIX } from './crdt.js'
import { parseHlc } from './hlc.js'

export const MAX_EDITS_PER_MESSAGE = 64
const RULE_ID_RE = /^[A-Za-z0-9_-]{1,64}$/
/** IANA names: `UTC`, `Europe/Berlin`, `America/Argentina/Buenos_Aires`, `Etc/GMT+1`; not offsets like `+01:00`. */
const IANA_RE = /^[A-Za-z][A-Za-z0-9_+-]*(?:\/[A-Za-z0-9_+-]+){0,2}$/

let zonesByLowerCase: Map<string, string> | null = null

/**
 * The zone as sent if Intl knows it, with the case of ICU's list (`europe/berlin` → `Europe/Berlin`); null if not.
 * Not ICU's canonical id: those are the old names (`Asia/Kolkata` → `Asia/Calcutta`), not what the user chose.
 */
export function canonicalTimeZone(tz: string): string | null {
  if (!IANA_RE.test(tz)) return null
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz })
  } catch {
    return null
  }
  zonesByLowerCase ??= new Map(Intl.supportedValuesOf('timeZone').map((z) => [z.toLowerCase(), z]))
  return zonesByLowerCase.get(tz.toLowerCase()) ?? tz
}

const hhmm = z.string().regex(/^(?:[01]\d|2[0-3]):[0-5]\d$/, 'expected HH:MM (00:00–23:59)')
// Rebuilt in a fixed key order: the canonical JSON of a value must not depend on how a device ordered its keys.
const quietHours = z
  .strictObject({ start: hhmm, end: hhmm })
  .transform((q) => ({ start: q.start, end: q.end }))
  .nullable()
const timeZone = z
  .string()
  .max(64)
  .transform((tz, ctx) => {
    const canonical = canonicalTimeZone(tz)
    if (canonical === null) {
      ctx.issues.push({ code: 'custom', message: `not an IANA time zone: ${JSON.stringify(tz)}`, input: tz })
      return z.NEVER
    }
    return canonical
  })
  .nullable()
const steps = z.number().int().min(1).max(100_000).nullable()
/** true mutes the rule, false unmutes it; one register per rule, so edits of different rules never collide. */
const muted = z.boolean()
/** A zone larger than a town would hide a whole race: 10 km is the bound (docs/privacy.md "Privacy zones"). */
export const MAX_ZONE_RADIUS_M = 10_000
export const ZONE_LABEL_MAX = 64
/** zones per user (the service refuses an edit that would make more) */
export const MAX_PRIVACY_ZONES = 20
const zone = z
  .strictObject({
    lat: z.number().min(-90).max(90),
    lon: z.number().min(-180).max(180),
    radiusM: z.number().min(1).max(MAX_ZONE_RADIUS_M),
    label: z.string().min(1).max(ZONE_LABEL_MAX).optional(),
  })
  // Fixed key order (canonical JSON), the label left out when absent.
  .transform((c) => ({
    lat: c.lat,
    lon: c.lon,
    radiusM: c.radiusM,
    ...(c.label !== undefined ? { label: c.label } : {}),
  }))
  .nullable()

/** The schema of a field's value, or null if there is no such field. */
export function fieldSchema(field: string): z.ZodType<FieldValue> | null {
  switch (field) {
    case 'quietHours':
      return quietHours
    case 'timeZone':
      return timeZone
    case 'goals.steps':
      return steps
  }
  if (field.startsWith(MUTED_PREFIX) && RULE_ID_RE.test(field.slice(MUTED_PREFIX.length))) return muted
  if (field.startsWith(ZONE_PREFIX) && RULE_ID_RE.test(field.slice(ZONE_PREFIX.length))) return zone
  return null
}

export const preferencesMessageSchema = z.object({
  node: z.string().regex(ID_RE, 'node: expected [A-Za-z0-9_-]{1,64}'),
  edits: z
    .array(z.object({ field: z.string().max(100), value: z.unknown(), hlc: z.string().max(100) }))
    .min(1)
    .max(MAX_EDITS_PER_MESSAGE),
})

export type ParsedMessage =
  | { ok: true; node: string; entries: { field: string; entry: Entry }[] }
  | { ok: false; reason: 'bad_payload' | 'clock_ahead'; detail: string; node?: string }

const bad = (detail: string, node?: string): ParsedMessage => ({
  ok: false,
  reason: 'bad_payload',
  detail,
  ...(node ? { node } : {}),
})

function issues(err: z.ZodError): string {
  return err.issues.map((i) => (i.path.length > 0 ? `${i.path.join('.')}: ${i.message}` : i.message)).join('; ')
}

/** Decodes and validates one message; `now` and `maxAheadMs` bound the stamps' wall time. */
export function parsePreferencesMessage(payload: Buffer, now: number, maxAheadMs: number): ParsedMessage {
  let raw: unknown
  try {
    raw = JSON.parse(payload.toString('utf8'))
  } catch (err) {
    return bad(`not JSON: ${(err as Error).message}`)
  }
  const envelope = preferencesMessageSchema.safeParse(raw)
  if (!envelope.success) return bad(issues(envelope.error))
  const { node, edits } = envelope.data
  const entries: { field: string; entry: Entry }[] = []
  for (const [i, edit] of edits.entries()) {
    const schema = fieldSchema(edit.field)
    if (!schema) return bad(`edits[${i}].field: unknown field ${JSON.stringify(edit.field)}`, node)
    const value = schema.safeParse(edit.value)
    if (!value.success) return bad(`edits[${i}].value (${edit.field}): ${issues(value.error)}`, node)
    const hlc = parseHlc(edit.hlc)
    if (!hlc) return bad(`edits[${i}].hlc: expected <wall ms>:<counter>:<node>, got ${JSON.stringify(edit.hlc)}`, node)
    if (hlc.node !== node) return bad(`edits[${i}].hlc: stamped by ${hlc.node}, not by the sending node ${node}`, node)
    if (hlc.wall > now + maxAheadMs) {
      return {
        ok: false,
        reason: 'clock_ahead',
        detail: `edits[${i}].hlc: wall time ${hlc.wall} is ${hlc.wall - now} ms ahead of the server (limit ${maxAheadMs} ms)`,
        node,
      }
    }
    entries.push({ field: edit.field, entry: entry(value.data, hlc) })
  }
  return { ok: true, node, entries }
}
