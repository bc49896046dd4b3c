// The recommendation message on users/{uid}/recommendations (JSON, QoS 1, not retained), also stored in the
// `recommendations` table and returned by delta sync. Its id is a hash of (user, rule, episode): re-evaluating an
// episode, or delivering it again, yields the same id, so an app drops what it has already shown.
import crypto from 'node:crypto'
import { z } from 'zod'

export const RULE_IDS = [
  'rhr_elevated',
  'zone_minutes_weekly',
  'step_goal',
  'move_reminder',
  'load_jump',
  'recovery_day',
] as const
export type RuleId = (typeof RULE_IDS)[number]

export const PRIORITIES = ['safety', 'recovery', 'load', 'goal', 'nudge'] as const
export type Priority = (typeof PRIORITIES)[number]
/** Lower goes first: safety > recovery > load > goal > nudge. */
export const PRIORITY_RANK: Record<Priority, number> = { safety: 0, recovery: 1, load: 2, goal: 3, nudge: 4 }

/** Every message ends with this (docs/insights.md: the general-wellness line, FDA 2016/2019/2026). */
export const DISCLAIMER = 'pulsegate provides general wellness information, not medical advice.'

export const evidenceSchema = z.object({
  /** what was measured, e.g. rhr_night */
  metric: z.string(),
  value: z.number().nullable(),
  baseline: z.number().nullable(),
  /** the span compared, e.g. "28 nights" */
  window: z.string(),
  /** the condition met, e.g. "+4 bpm × 2 nights" */
  threshold: z.string(),
  /** share of the needed data that was there, 0–1 */
  coverage: z.number().min(0).max(1),
  /** what was missing, when something was (the advice then says so too) */
  missing: z.string().optional(),
})
export type Evidence = z.infer<typeof evidenceSchema>

/** What a rule proposes; the delivery layer (delivery.ts) decides whether it goes out. */
export interface Candidate {
  userId: string
  rule: RuleId
  version: number
  priority: Priority
  /** the episode this belongs to (a start day, a week and milestone, an hour): part of the id */
  episode: string
  title: string
  /** without the disclaimer; buildPayload appends it */
  message: string
  evidence: Evidence
  createdAt: number
  expiresAt: number
  /** the user's local date the advice is for, YYYY-MM-DD */
  localDay: string
}

/** The message as published and stored; its type is inferred from the schema (docs/asyncapi.yaml, src/client). */
export const recommendationPayloadSchema = z
  .object({
    id: z.string().describe('hash of (user, rule, episode): the same advice always has the same id'),
    rule: z.enum(RULE_IDS),
    version: z.number().int(),
    createdAt: z.string().describe('ISO 8601'),
    expiresAt: z.string().describe('ISO 8601'),
    priority: z.enum(PRIORITIES),
    title: z.string(),
    message: z.string().describe('ends with the general-wellness disclaimer'),
    evidence: evidenceSchema,
    purpose: z.literal('recommendations'),
  })
  .describe('a wellness recommendation (general wellness information, not medical advice)')
export type RecommendationPayload = z.infer<typeof recommendationPayloadSchema>

export function recommendationId(userId: string, rule: string, episode: string): string {
  return crypto.createHash('sha256').update(`${userId}\u0000${rule}\u0000${episode}`).digest('base64url').slice(0, 22)
}

/** Words a message must never contain: disease names (docs/insights.md, "Wording"). Checked by the unit tests. */
export const FORBIDDEN_WORDS = [
  'afib',
  'atrial',
  'apnea',
  'apnoea',
  'covid',
  'infection',
  'influenza',
  'flu',
  'disease',
  'overtraining syndrome',
  'arrhythmia',
  'diagnos',
]

export function buildPayload(c: Candidate): RecommendationPayload {
  return {
    id: recommendationId(c.userId, c.rule, c.episode),
    rule: c.rule,
    version: c.version,
    createdAt: new Date(c.createdAt).toISOString(),
    expiresAt: new Date(c.expiresAt).toISOString(),
    priority: c.priority,
    title: c.title,
    message: `${c.message} ${DISCLAIMER}`,
    evidence: c.evidence,
    purpose: 'recommendations',
  }
}

export const round1 = (v: number): number => Math.round(v * 10) / 10
