// What apps, medics and the simulator receive on the output topics (JSON). Documented in docs/outputs.md.
// Each shape is a zod schema and its type is inferred from it: the same schema feeds docs/asyncapi.yaml
// (src/topics/asyncapi.ts) and the app client (src/client), so the contract cannot drift from the builders.
import { z } from 'zod'

export const ALERT_KINDS = [
  'hr_high', // sustained high HR while inactive
  'hr_low', // sustained low HR
  'hr_above_max', // above the personal predicted max (Tanaka 208 − 0.7·age)
  'stopped_abnormal', // race: stopped moving and HR missing or abnormal
  'sensor_lost', // HR signal lost while GPS says moving
  'spo2_low', // sustained SpO2 below threshold
  'runner_silent', // race: every device of the runner silent, no goodbye, course not finished
] as const
export const alertKindSchema = z.enum(ALERT_KINDS)
export type AlertKind = z.infer<typeof alertKindSchema>

export const severitySchema = z.enum(['info', 'warning', 'critical'])
export type Severity = z.infer<typeof severitySchema>

const epochMs = z.number().describe('epoch milliseconds')

/** `users/{uid}/alerts` and `events/{eid}/alerts` (QoS 1); one `opened` and one `resolved` per episode. */
export const alertMessageSchema = z
  .object({
    id: z.string(),
    kind: alertKindSchema,
    severity: severitySchema,
    state: z.enum(['opened', 'resolved']),
    userId: z.string(),
    deviceId: z.string(),
    eventId: z.string().nullable(),
    /** epoch ms of the sample that opened the episode */
    openedAt: epochMs,
    resolvedAt: epochMs.nullable(),
    evidence: z.object({
      /** epoch ms of the sample that triggered this message */
      t: epochMs,
      hr: z.number().nullable().optional(),
      spo2: z.number().nullable().optional(),
      speedMps: z.number().nullable().optional(),
      threshold: z.number().optional(),
      windowS: z.number().optional(),
      lat: z.number().nullable().optional(),
      lon: z.number().nullable().optional(),
      /** runner_silent: when the last known position was taken, and how long the runner has been silent */
      positionT: epochMs.nullable().optional(),
      silentS: z.number().optional(),
    }),
  })
  .describe('a health alert episode: one `opened` and one `resolved` message per episode, persisted with its id')
export type AlertMessage = z.infer<typeof alertMessageSchema>

/** `users/{uid}/live` (retained, QoS 0), at most about once per second per user. */
export const liveSnapshotSchema = z
  .object({
    t: epochMs,
    hr: z.number().nullable(),
    /** 1–5 (percent of the predicted max HR: 50–60, 60–70, 70–80, 80–90, 90+), null below 50 % or unknown */
    zone: z.number().int().min(1).max(5).nullable(),
    /** seconds per km over the last minute of GPS, null when not moving */
    paceSPerKm: z.number().nullable(),
    distanceM: z.number(),
    eventId: z.string().nullable(),
    rank: z.number().int().nullable(),
  })
  .describe('the latest snapshot of a user, at most about once per second')
export type LiveSnapshot = z.infer<typeof liveSnapshotSchema>

/** `events/{eid}/leaderboard` (retained, QoS 0), at most once per second per event. Consenting runners only. */
export const leaderboardMessageSchema = z
  .object({
    eventId: z.string(),
    t: epochMs,
    runners: z.number().int().describe('runners on the board (consenting participants)'),
    top: z.array(
      z.object({
        rank: z.number().int(),
        userId: z.string(),
        distanceM: z.number(),
        paceSPerKm: z.number().nullable(),
        etaS: z.number().nullable(),
      }),
    ),
  })
  .describe('top N of an event, at most once per second; consenting runners only')
export type LeaderboardMessage = z.infer<typeof leaderboardMessageSchema>

/**
 * `events/{eid}/positions` (QoS 0, not retained), the race-control map's feed, for the event's medics: each output
 * tick, the newest committed position of every runner who moved since the last one, in messages of at most
 * POSITIONS_PER_MESSAGE runners. Only runners who granted `live_sharing`; a position inside one of the runner's
 * privacy zones is left out unless the runner has an open alert (`alert: true`), docs/privacy.md "Privacy zones".
 */
export const positionsMessageSchema = z
  .object({
    eventId: z.string(),
    t: epochMs,
    runners: z.array(
      z.object({ userId: z.string(), t: epochMs, lat: z.number(), lon: z.number(), alert: z.boolean() }),
    ),
  })
  .describe('newest position of every runner who moved since the last tick (live_sharing granted, privacy zones kept)')
export type PositionsMessage = z.infer<typeof positionsMessageSchema>

/**
 * Race control's view of an alert (GET /console/api/alerts, src/outputs/alert-actions.ts) and, with `action`, the
 * message on `events/{eid}/alerts` (QoS 1) when a medic acknowledges or resolves it: an AlertMessage with who
 * acknowledged / closed it. `state` stays the episode's (`resolved` once a medic resolved it).
 */
const byAt = z.object({ at: epochMs, by: z.string().nullable() }).nullable()
export const alertActionMessageSchema = alertMessageSchema
  .extend({
    acknowledged: byAt,
    closed: byAt,
    action: z.object({ action: z.enum(['acknowledge', 'resolve']), by: z.string().nullable(), at: epochMs }).optional(),
  })
  .describe('an alert with what race control did about it (acknowledged, resolved by a medic)')
export type AlertActionMessage = z.infer<typeof alertActionMessageSchema>
