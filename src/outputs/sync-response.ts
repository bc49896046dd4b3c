// The answer on users/{uid}/sync/response to a delta sync request (sync.ts). Its cursors are the request's own schema
// (syncRequestSchema in sync.ts), so a change of the cursor there changes the documented answer and the client too.
import { z } from 'zod'
import { recommendationPayloadSchema } from '../insights/payload.js'
import { alertKindSchema, alertMessageSchema, severitySchema } from './payloads.js'
import { syncConsentSchema, syncRequestSchema } from './sync.js'

export const syncCursorSchema = syncRequestSchema.shape.cursor.unwrap()
export type SyncCursor = z.infer<typeof syncCursorSchema>
export const SYNC_KINDS = syncRequestSchema.shape.kinds.unwrap().element.options
export type SyncKind = (typeof SYNC_KINDS)[number]

export const syncReadingSchema = z.object({
  id: z.string().optional().describe('commit-order responses: the reading’s identity (device/metric/time in µs)'),
  t: z.number().describe('epoch ms of the sample, or of the bucket start for 1m/1h'),
  device: z.string(),
  metric: z.string().describe('hr, spo2, steps, cadence, skin_temp, resp, distance'),
  value: z.number().describe('raw: the value; 1m/1h: the average'),
  min: z.number().optional(),
  max: z.number().optional(),
  sum: z.number().optional(),
  n: z.number().int().optional(),
})

export const syncAlertSchema = z.object({
  id: z.string(),
  kind: alertKindSchema,
  severity: severitySchema,
  eventId: z.string().nullable(),
  deviceId: z.string(),
  state: z.enum(['opened', 'resolved']),
  openedAt: z.number(),
  resolvedAt: z.number().nullable(),
  changedAt: z.number().describe('epoch ms of the last change: the alerts cursor'),
  /** as stored: the live message's evidence, without its `t` (that is openedAt or resolvedAt) */
  evidence: alertMessageSchema.shape.evidence.partial({ t: true }),
})

export const syncPageSchema = z
  .object({
    requestId: z.string().nullable(),
    readings: z.array(syncReadingSchema).optional(),
    alerts: z.array(syncAlertSchema).optional(),
    recommendations: z.array(recommendationPayloadSchema).optional(),
    consents: z.array(syncConsentSchema).optional().describe('commit-order responses: consent changes'),
    nextCursor: syncCursorSchema.describe('send it back as the next request’s cursor'),
    more: z.boolean().describe('true: ask again with nextCursor for the next page'),
  })
  .describe('one page of readings/alerts/recommendations after the cursor')
export type SyncPage = z.infer<typeof syncPageSchema>

export const syncErrorSchema = z
  .object({
    requestId: z.string().nullable().optional(),
    error: z.enum(['bad_request', 'bad_cursor', 'unavailable']),
    detail: z.string().optional(),
  })
  .describe(
    'bad_request: the request did not parse (detail says why); bad_cursor: a string cursor the broker did not make; unavailable: the database failed, retry',
  )
export type SyncError = z.infer<typeof syncErrorSchema>

export const syncResponseSchema = z.union([syncPageSchema, syncErrorSchema])
export type SyncResponse = z.infer<typeof syncResponseSchema>
