// What apps, medics and the simulator receive on the output topics (JSON). Documented in docs/outputs.md.

export type AlertKind =
  | 'hr_high' // sustained high HR while inactive
  | 'hr_low' // sustained low HR
  | 'hr_above_max' // above the personal predicted max (Tanaka 208 − 0.7·age)
  | 'stopped_abnormal' // race: stopped moving and HR missing or abnormal
  | 'sensor_lost' // HR signal lost while GPS says moving
  | 'spo2_low' // sustained SpO2 below threshold
  | 'runner_silent' // race: every device of the runner silent, no goodbye, course not finished

export type Severity = 'info' | 'warning' | 'critical'

/** `users/{uid}/alerts` and `events/{eid}/alerts` (QoS 1); one `opened` and one `resolved` per episode. */
export interface AlertMessage {
  id: string
  kind: AlertKind
  severity: Severity
  state: 'opened' | 'resolved'
  userId: string
  deviceId: string
  eventId: string | null
  /** epoch ms of the sample that opened the episode */
  openedAt: number
  resolvedAt: number | null
  evidence: {
    /** epoch ms of the sample that triggered this message */
    t: number
    hr?: number | null
    spo2?: number | null
    speedMps?: number | null
    threshold?: number
    windowS?: number
    lat?: number | null
    lon?: number | null
    /** runner_silent: when the last known position was taken, and how long the runner has been silent */
    positionT?: number | null
    silentS?: number
  }
}

/** `users/{uid}/live` (retained, QoS 0), at most about once per second per user. */
export interface LiveSnapshot {
  t: number
  hr: number | null
  /** 1–5 (percent of the predicted max HR: 50–60, 60–70, 70–80, 80–90, 90+), null below 50 % or unknown */
  zone: number | null
  /** seconds per km over the last minute of GPS, null when not moving */
  paceSPerKm: number | null
  distanceM: number
  eventId: string | null
  rank: number | null
}

/** `events/{eid}/leaderboard` (retained, QoS 0), at most once per second per event. Consenting runners only. */
export interface LeaderboardMessage {
  eventId: string
  t: number
  runners: number
  top: { rank: number; userId: string; distanceM: number; paceSPerKm: number | null; etaS: number | null }[]
}

/**
 * `events/{eid}/positions` (QoS 0, not retained), the race-control map's feed, for the event's medics: each output
 * tick, the newest committed position of every runner who moved since the last one, in messages of at most
 * POSITIONS_PER_MESSAGE runners. Only runners who granted `live_sharing`; a position inside one of the runner's
 * privacy zones is left out unless the runner has an open alert (`alert: true`), docs/privacy.md "Privacy zones".
 */
export interface PositionsMessage {
  eventId: string
  t: number
  runners: { userId: string; t: number; lat: number; lon: number; alert: boolean }[]
}

/**
 * Race control's view of an alert (GET /console/api/alerts, src/outputs/alert-actions.ts) and, with `action`, the
 * message on `events/{eid}/alerts` (QoS 1) when a medic acknowledges or resolves it: an AlertMessage with who
 * acknowledged / closed it. `state` stays the episode's (`resolved` once a medic resolved it).
 */
export interface AlertActionMessage extends AlertMessage {
  acknowledged: { at: number; by: string | null } | null
  closed: { at: number; by: string | null } | null
  action?: { action: 'acknowledge' | 'resolve'; by: string | null; at: number }
}
