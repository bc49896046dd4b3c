// Every topic of the grammar (grammar.ts) with its direction, QoS, retain flag, who may use it, its security scheme and
// its payload's zod schema (the one the code validates or builds with). asyncapi.ts turns this into docs/asyncapi.yaml.
import type { z } from 'zod'
import { preferencesStateMessageSchema } from '../insights/preferences/crdt.js'
import { preferencesMessageSchema } from '../insights/preferences/wire.js'
import { recommendationPayloadSchema } from '../insights/payload.js'
import { statsMessageSchema } from '../insights/dp/release.js'
import { consentPayloadSchema, consentStateMessageSchema } from '../ops/consent-model.js'
import {
  alertActionMessageSchema,
  alertMessageSchema,
  leaderboardMessageSchema,
  liveSnapshotSchema,
  positionsMessageSchema,
} from '../outputs/payloads.js'
import { syncResponseSchema } from '../outputs/sync-response.js'
import { syncRequestSchema } from '../outputs/sync.js'
import { rejectionSchema } from '../pipeline/types.js'
import { deviceConfigSchema, deviceStatusSchema, readingsBatchSchema } from '../pipeline/wire.js'

export type Security = 'mtls' | 'jwt'

export interface MessageSpec {
  name: string
  schema: z.ZodType
  /** 'input': what the broker accepts (defaults may be left out); 'output': what it sends */
  io: 'input' | 'output'
  contentType?: 'application/json' | 'application/cbor'
  title: string
}

export interface TopicSpec {
  id: string
  template: string
  /** in: clients publish, the broker receives; out: the broker publishes */
  direction: 'in' | 'out'
  qos: 0 | 1
  retained: boolean
  who: string
  security: Security[]
  summary: string
  messages: MessageSpec[]
  /** the request's answer topic (request → response) */
  reply?: string
}

const json = (name: string, title: string, schema: z.ZodType, io: 'input' | 'output'): MessageSpec => ({
  name,
  title,
  schema,
  io,
})

/** One entry per topic of grammar.ts; the test fails when the grammar and this table differ. */
export const TOPICS: readonly TopicSpec[] = [
  {
    id: 'deviceReadings',
    template: 'devices/{deviceId}/readings',
    direction: 'in',
    qos: 1,
    retained: false,
    who: 'the device (mTLS); a bridge of its owner (JWT role bridge); never retained, never routed (admins may tap)',
    security: ['mtls', 'jwt'],
    summary:
      'A batch of samples, CBOR (RFC 8949) or JSON, told apart by the first byte. QoS 0 or 1 (2 is handled as 1). ' +
      'QoS 1: the PUBACK is sent only after every accepted sample of the batch is durably committed; a sample already ' +
      'stored (same device, metric, t) is stored once. Refused samples are answered on devices/{deviceId}/rejections.',
    messages: [
      {
        name: 'readingsBatchCbor',
        title: 'Readings batch (CBOR)',
        schema: readingsBatchSchema,
        io: 'input',
        contentType: 'application/cbor',
      },
      { ...json('readingsBatchJson', 'Readings batch (JSON)', readingsBatchSchema, 'input') },
    ],
  },
  {
    id: 'deviceStatus',
    template: 'devices/{deviceId}/status',
    direction: 'in',
    qos: 1,
    retained: false,
    who: 'the device; a bridge of its owner',
    security: ['mtls', 'jwt'],
    summary: 'Battery, firmware and buffered-sample count; the latest per device is kept. QoS 0 or 1.',
    messages: [json('deviceStatus', 'Device status', deviceStatusSchema, 'input')],
  },
  {
    id: 'deviceRejections',
    template: 'devices/{deviceId}/rejections',
    direction: 'out',
    qos: 1,
    retained: false,
    who: 'the device; its owner (bridge, app)',
    security: ['mtls', 'jwt'],
    summary: 'Why (part of) a batch was refused, one message per refused sample (at most 32, then more_rejections).',
    messages: [json('rejection', 'Rejection', rejectionSchema, 'output')],
  },
  {
    id: 'deviceConfig',
    template: 'devices/{deviceId}/config',
    direction: 'out',
    qos: 1,
    retained: true,
    who: 'the device and its owner subscribe; an admin publishes it',
    security: ['mtls', 'jwt'],
    summary: 'Sampling instructions for the device (adaptive sampling, edge throttling under load).',
    messages: [json('deviceConfig', 'Device configuration', deviceConfigSchema, 'output')],
  },
  {
    id: 'userAlerts',
    template: 'users/{userId}/alerts',
    direction: 'out',
    qos: 1,
    retained: false,
    who: "that user's apps and bridges",
    security: ['jwt'],
    summary: 'Health alerts, each persisted with an id: one opened and one resolved message per episode.',
    messages: [json('alert', 'Alert', alertMessageSchema, 'output')],
  },
  {
    id: 'userLive',
    template: 'users/{userId}/live',
    direction: 'out',
    qos: 0,
    retained: true,
    who: "that user's apps and bridges",
    security: ['jwt'],
    summary: 'Latest snapshot (hr, zone, pace, distance, event rank), at most about once per second.',
    messages: [json('liveSnapshot', 'Live snapshot', liveSnapshotSchema, 'output')],
  },
  {
    id: 'userRecommendations',
    template: 'users/{userId}/recommendations',
    direction: 'out',
    qos: 1,
    retained: false,
    who: "that user's apps (consent purpose recommendations)",
    security: ['jwt'],
    summary: 'Wellness recommendations; the same advice always carries the same id.',
    messages: [json('recommendation', 'Recommendation', recommendationPayloadSchema, 'output')],
  },
  {
    id: 'userSyncRequest',
    template: 'users/{userId}/sync/request',
    direction: 'in',
    qos: 1,
    retained: false,
    who: "that user's apps",
    security: ['jwt'],
    summary:
      'Delta sync: readings/alerts/recommendations after a cursor (per kind, exclusive), a page at a time; ' +
      'repeat with the answer’s nextCursor while more is true.',
    messages: [json('syncRequest', 'Sync request', syncRequestSchema, 'input')],
    reply: 'userSyncResponse',
  },
  {
    id: 'userSyncResponse',
    template: 'users/{userId}/sync/response',
    direction: 'out',
    qos: 1,
    retained: false,
    who: "that user's apps",
    security: ['jwt'],
    summary: 'One page of a delta sync, or an error.',
    messages: [json('syncResponse', 'Sync response', syncResponseSchema, 'output')],
  },
  {
    id: 'userConsent',
    template: 'users/{userId}/consent',
    direction: 'in',
    qos: 1,
    retained: false,
    who: "that user's own apps (role app; not a bridge)",
    security: ['jwt'],
    summary:
      'Set consent per purpose. A malformed payload is acknowledged (MQTT 3.1.1 has no negative PUBACK), changes ' +
      'nothing and is counted.',
    messages: [json('consentChange', 'Consent change', consentPayloadSchema, 'input')],
    reply: 'userConsentState',
  },
  {
    id: 'userConsentState',
    template: 'users/{userId}/consent/state',
    direction: 'out',
    qos: 1,
    retained: true,
    who: "that user's apps",
    security: ['jwt'],
    summary: 'The current consent state, after every change.',
    messages: [json('consentState', 'Consent state', consentStateMessageSchema, 'output')],
  },
  {
    id: 'userPreferences',
    template: 'users/{userId}/preferences',
    direction: 'in',
    qos: 1,
    retained: false,
    who: "that user's own apps (role app)",
    security: ['jwt'],
    summary:
      'Edits of quiet hours, time zone, muted rules, goals, privacy zones, each stamped by the device’s hybrid ' +
      'logical clock (fields: quietHours, timeZone, goals.steps, mutedRules.<rule>, privacyZones.<id>); merged per ' +
      'field (a CRDT map). All or nothing per message.',
    messages: [json('preferencesEdit', 'Preferences edit', preferencesMessageSchema, 'input')],
    reply: 'userPreferencesState',
  },
  {
    id: 'userPreferencesState',
    template: 'users/{userId}/preferences/state',
    direction: 'out',
    qos: 1,
    retained: true,
    who: "that user's apps",
    security: ['jwt'],
    summary: 'The merged preferences with every field’s clock.',
    messages: [json('preferencesState', 'Preferences state', preferencesStateMessageSchema, 'output')],
  },
  {
    id: 'eventLeaderboard',
    template: 'events/{eventId}/leaderboard',
    direction: 'out',
    qos: 0,
    retained: true,
    who: 'participants, medics of the event; anyone signed in when the event is public',
    security: ['jwt'],
    summary: 'Top N with rank, distance, pace, at most once per second; only consenting participants.',
    messages: [json('leaderboard', 'Leaderboard', leaderboardMessageSchema, 'output')],
  },
  {
    id: 'eventAlerts',
    template: 'events/{eventId}/alerts',
    direction: 'out',
    qos: 1,
    retained: false,
    who: 'medics of the event (JWT role medic with the event id)',
    security: ['jwt'],
    summary:
      'Alerts of all participants of the event (consent purpose medical_alerts, on unless withdrawn), and race ' +
      'control’s acknowledgements and resolutions of them (POST /console/api/alerts/{alertId}/…).',
    messages: [
      json('eventAlert', 'Event alert', alertMessageSchema, 'output'),
      json('alertAction', 'Race control action on an alert', alertActionMessageSchema, 'output'),
    ],
  },
  {
    id: 'eventStats',
    template: 'events/{eventId}/stats',
    direction: 'out',
    qos: 0,
    retained: true,
    who: 'anyone allowed on the event',
    security: ['jwt'],
    summary: 'Differentially private aggregates (discrete Laplace noise, a daily ε budget per event).',
    messages: [json('stats', 'Event statistics', statsMessageSchema, 'output')],
  },
  {
    id: 'eventPositions',
    template: 'events/{eventId}/positions',
    direction: 'out',
    qos: 0,
    retained: false,
    who: 'medics of the event',
    security: ['jwt'],
    summary:
      'The race-control map: newest fix per moved runner each tick; only runners who granted live_sharing, none ' +
      'inside their privacy zones unless an alert of theirs is open.',
    messages: [json('positions', 'Positions', positionsMessageSchema, 'output')],
  },
]
