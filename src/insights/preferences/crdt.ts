// The preferences CRDT: a map of last-writer-wins registers, one per field, ordered by hybrid logical clock. Merging
// keeps, per field, the entry with the greatest (HLC, canonical value); that is a join on a product of total orders,
// so merging is commutative, associative and idempotent and every device converges whatever the order of arrival
// (test/unit/preferences-crdt.test.ts checks it over random edit sets, orders and duplications).
import { z } from 'zod'
import { compareHlc, formatHlc, type Hlc } from './hlc.js'
import type { Preferences, PrivacyZone, QuietHours, ZoneCircle } from './reader.js'

/** null clears a field (a tombstone: its clock still orders later edits). */
export type FieldValue = QuietHours | ZoneCircle | string | number | boolean | null

export interface Entry {
  readonly value: FieldValue
  readonly hlc: Hlc
  /**
   * The value's canonical JSON (fields are normalised, so equal values give equal text). Breaks the tie between
   * two different values carrying the same stamp — only a device reusing a stamp can cause one — so that even then
   * the merge is a function of the set of edits, not of their order.
   */
  readonly key: string
}

export type PrefsMap = ReadonlyMap<string, Entry>

export function entry(value: FieldValue, hlc: Hlc): Entry {
  return { value, hlc, key: JSON.stringify(value) }
}

export function compareEntry(a: Entry, b: Entry): number {
  const c = compareHlc(a.hlc, b.hlc)
  if (c !== 0) return c
  if (a.key === b.key) return 0
  return a.key < b.key ? -1 : 1
}

/** Folds one entry into `map` (in place); true if it won, false if the field already holds an equal or greater one. */
export function applyEntry(map: Map<string, Entry>, field: string, e: Entry): boolean {
  const current = map.get(field)
  if (current && compareEntry(e, current) <= 0) return false
  map.set(field, e)
  return true
}

/** The join of two states: per field, the greater entry. */
export function join(a: PrefsMap, b: PrefsMap): Map<string, Entry> {
  const out = new Map(a)
  for (const [field, e] of b) applyEntry(out, field, e)
  return out
}

export function equalStates(a: PrefsMap, b: PrefsMap): boolean {
  if (a.size !== b.size) return false
  for (const [field, e] of a) {
    const o = b.get(field)
    if (!o || o.key !== e.key || compareHlc(o.hlc, e.hlc) !== 0) return false
  }
  return true
}

export const MUTED_PREFIX = 'mutedRules.'
/** `privacyZones.<zoneId>`: one register per zone, so zones added on two devices never collide (null removes one) */
export const ZONE_PREFIX = 'privacyZones.'

function isCircle(v: FieldValue): v is ZoneCircle {
  return v !== null && typeof v === 'object' && 'radiusM' in v
}

export function project(map: PrefsMap): Preferences {
  const out: Preferences = { mutedRules: [] }
  const zones: PrivacyZone[] = []
  for (const [field, { value }] of map) {
    if (field === 'quietHours' && value !== null && typeof value === 'object' && 'start' in value)
      out.quietHours = { ...value }
    else if (field === 'timeZone' && typeof value === 'string') out.timeZone = value
    else if (field === 'goals.steps' && typeof value === 'number') out.goals = { ...out.goals, steps: value }
    else if (field.startsWith(MUTED_PREFIX) && value === true) out.mutedRules.push(field.slice(MUTED_PREFIX.length))
    else if (field.startsWith(ZONE_PREFIX) && isCircle(value))
      zones.push({ id: field.slice(ZONE_PREFIX.length), ...value })
  }
  out.mutedRules.sort()
  if (zones.length > 0) out.privacyZones = zones.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0))
  return out
}

const stateValueSchema = z.union([
  z.object({ start: z.string(), end: z.string() }).describe('quietHours: HH:MM local time'),
  z
    .object({ lat: z.number(), lon: z.number(), radiusM: z.number(), label: z.string().optional() })
    .describe('privacyZones.<id>: a circle'),
  z.string(),
  z.number(),
  z.boolean(),
  z.null(),
])

/** The retained message on users/{uid}/preferences/state; its type is inferred (docs/asyncapi.yaml, src/client). */
export const preferencesStateMessageSchema = z
  .object({
    userId: z.string(),
    state: z.record(z.string(), stateValueSchema).describe('field → value; cleared fields are null'),
    clock: z
      .record(z.string(), z.string())
      .describe('field → `<wall>:<counter>:<node>`, so a device can merge the state into its own copy'),
  })
  .describe("the user's merged preferences (retained), with each field's hybrid logical clock")
export type PreferencesStateMessage = z.infer<typeof preferencesStateMessageSchema>

export function stateMessage(userId: string, map: PrefsMap): PreferencesStateMessage {
  const state: Record<string, FieldValue> = {}
  const clock: Record<string, string> = {}
  for (const field of [...map.keys()].sort()) {
    const e = map.get(field) as Entry
    state[field] = e.value
    clock[field] = formatHlc(e.hlc)
  }
  return { userId, state, clock }
}
