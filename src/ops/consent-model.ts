// The consent model shared by the service, the RPC and the CLI: the five purposes, the state and history shapes, and
// the app's consent payloads (parsed with zod; a bad one is a ConsentPayloadError that says what is wrong).
import { z } from 'zod'

export const PURPOSES = ['leaderboard', 'live_sharing', 'medical_alerts', 'recommendations', 'research'] as const
export type Purpose = (typeof PURPOSES)[number]

/** Where a change came from; mirrors consents_source_check in migrations/0007_privacy.sql. */
export type ConsentSource = 'cli' | 'rpc' | `app:${string}` | `event-join:${string}`
export const SOURCE_RE = /^(cli|rpc|app:[!-~]{1,200}|event-join:[A-Za-z0-9_-]{1,64})$/

export interface PurposeState {
  granted: boolean
  /** 0: never set */
  version: number
  /** ISO time of the change, null when never set */
  at: string | null
  source: string | null
}
export type ConsentState = Record<Purpose, PurposeState>

export interface ConsentChange {
  userId: string
  purpose: Purpose
  granted: boolean
  version: number
  at: string
  source: string
}

export interface ConsentRecord {
  purpose: Purpose
  /** set for an event's leaderboard opt-in recorded at event join; null for the user-level purpose */
  eventId: string | null
  granted: boolean
  version: number
  source: string
  at: string
}

/** The retained message on users/{uid}/consent/state; `version` counts the user's changes (sum of the purposes'). */
export const consentStateMessageSchema = z
  .object({
    userId: z.string(),
    consents: z.record(z.enum(PURPOSES), z.boolean()),
    version: z.number().int().min(0),
  })
  .describe("the user's current consent per purpose (retained)")
export type ConsentStateMessage = z.infer<typeof consentStateMessageSchema>

export class ConsentError extends Error {}

export type ConsentPayloadRefusal = 'too_large' | 'not_json' | 'bad_shape'

export class ConsentPayloadError extends ConsentError {
  constructor(
    readonly reason: ConsentPayloadRefusal,
    message: string,
  ) {
    super(message)
  }
}

/** Largest consent payload read (the five purposes fit in ~150 bytes). */
export const CONSENT_PAYLOAD_MAX = 4096

const purposeSchema = z.enum(PURPOSES)
const onePurpose = z.strictObject({ purpose: purposeSchema, granted: z.boolean() })
const manyPurposes = z.strictObject({
  consents: z
    .partialRecord(purposeSchema, z.boolean())
    .refine((r) => Object.keys(r).length > 0, 'name at least one purpose'),
})
/** What an app publishes on users/{uid}/consent: one purpose, or several at once. */
export const consentPayloadSchema = z
  .union([onePurpose, manyPurposes])
  .describe('set one purpose ({purpose, granted}) or several ({consents: {purpose: granted}})')
export type ConsentPayload = z.infer<typeof consentPayloadSchema>
const EXPECTED =
  `expected {"purpose":"<purpose>","granted":true|false} or {"consents":{"<purpose>":true|false,…}}` +
  ` with purposes ${PURPOSES.join(', ')}`

/** Parses an app's consent publish: the changes it asks for, or a ConsentPayloadError saying what is wrong. */
export function parseConsentPayload(payload: Buffer | string): Partial<Record<Purpose, boolean>> {
  const text = typeof payload === 'string' ? payload : payload.toString('utf8')
  if (Buffer.byteLength(text) > CONSENT_PAYLOAD_MAX)
    throw new ConsentPayloadError('too_large', `consent payload larger than ${CONSENT_PAYLOAD_MAX} bytes`)
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch (err) {
    throw new ConsentPayloadError('not_json', `consent payload is not JSON (${(err as Error).message}); ${EXPECTED}`)
  }
  const many = typeof json === 'object' && json !== null && 'consents' in json
  const parsed = many ? manyPurposes.safeParse(json) : onePurpose.safeParse(json)
  if (!parsed.success) {
    const why = parsed.error.issues.map((i) => `${i.path.join('.') || 'payload'}: ${i.message}`).join('; ')
    throw new ConsentPayloadError('bad_shape', `consent payload refused (${why}); ${EXPECTED}`)
  }
  const d = parsed.data
  return 'consents' in d ? d.consents : { [d.purpose]: d.granted }
}

/** The consent source of an app client: `app:<client id>` (a token client's id already starts with `app:`). */
export function appSource(clientId: string): ConsentSource {
  const clean = clientId.replace(/[^!-~]/g, '_')
  const rest = (clean.startsWith('app:') ? clean.slice(4) : clean).slice(0, 200)
  return `app:${rest || '_'}`
}

/**
 * What a purpose means while the person has never set it. Only `medical_alerts` is on by default: a race's medics get
 * the alerts of the event's runners (protection of vital interests, GDPR Art. 9(2)(c): a runner who collapses cannot
 * consent then); an explicit withdrawal is honoured. Everything else needs an explicit grant.
 */
export const GRANTED_WHEN_UNSET: Readonly<Record<Purpose, boolean>> = {
  leaderboard: false,
  live_sharing: false,
  medical_alerts: true,
  recommendations: false,
  research: false,
}

export function defaultState(): ConsentState {
  const s = {} as ConsentState
  for (const p of PURPOSES) s[p] = { granted: GRANTED_WHEN_UNSET[p], version: 0, at: null, source: null }
  return s
}
