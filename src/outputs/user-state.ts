// A user's output state: profile, current event, rolling windows of recent committed samples, event distance and open
// alert episodes. Pure data and the pure functions that keep its windows; loading it is state-load.ts.
import { METRICS } from '../pipeline/types.js'
import type { AlertKind, Severity } from './payloads.js'
import { type Profile, recentSpeed, type Window } from './rules.js'

export interface EventCtx {
  eventId: string
  consent: boolean
  startsAt: number | null
  courseM: number | null
}

export interface OpenEpisode {
  id: string
  kind: AlertKind
  severity: Severity
  openedAt: number
  deviceId: string
  eventId: string | null
}

export interface UserState {
  userId: string
  profile: Profile
  window: Window
  event: EventCtx | null
  distanceM: number
  /** newest distance sample counted: derived distance only grows forward, so this makes counting idempotent */
  distanceT: number
  /** the device whose distance counts now (one GPS source at a time), and its newest distance sample */
  distanceSource: string | null
  distanceSourceT: number
  firstT: number | null
  open: Map<AlertKind, OpenEpisode>
  resolvedAt: Map<AlertKind, number>
  lastDeviceId: string
  /** wall-clock time of the last committed batch per device (silent-runner check; dropped on a clean DISCONNECT) */
  heardFrom: Map<string, number>
  /** the user's output work, serialised: each committed batch runs after the previous one */
  chain: Promise<void>
  lastUse: number
}

/** A state before anything is known: what a user first seen gets until its load from the database completes. */
export function blankState(userId: string, deviceId: string): UserState {
  return {
    userId,
    profile: { age: null, hrHigh: null, hrLow: null },
    window: { hr: [], spo2: [], steps: [], pos: [] },
    event: null,
    distanceM: 0,
    distanceT: 0,
    distanceSource: null,
    distanceSourceT: 0,
    firstT: null,
    open: new Map(),
    resolvedAt: new Map(),
    lastDeviceId: deviceId,
    heardFrom: new Map(),
    chain: Promise.resolve(),
    lastUse: Date.now(),
  }
}

/** Drops the points older than `from` (windows are in time order). */
export function trim<T extends { t: number }>(xs: T[], from: number): void {
  let i = 0
  while (i < xs.length && (xs[i] as T).t < from) i++
  if (i > 0) xs.splice(0, i)
}

/**
 * Windows keep at most one point per series per second: a device sampling faster (or a load generator) would otherwise
 * fill them with hundreds of thousands of objects per user and the heap with garbage the GC must keep promoting. A newer
 * sample in the same second replaces the last point; out-of-order samples are inserted. (Steps are kept as they come.)
 */
const WINDOW_RESOLUTION_MS = 1000

export function pushCompact<T extends { t: number }>(xs: T[], x: T): void {
  const last = xs[xs.length - 1]
  if (last && x.t > last.t && Math.floor(x.t / WINDOW_RESOLUTION_MS) === Math.floor(last.t / WINDOW_RESOLUTION_MS)) {
    xs[xs.length - 1] = x
    return
  }
  pushSorted(xs, x)
}

/** Inserts in time order; a second point with the same time is the same sample (reloaded or redelivered): skipped. */
export function pushSorted<T extends { t: number }>(xs: T[], x: T): void {
  const last = xs[xs.length - 1]
  if (!last || last.t < x.t) {
    xs.push(x)
    return
  }
  let i = xs.length
  while (i > 0 && (xs[i - 1] as T).t > x.t) i--
  if (i > 0 && (xs[i - 1] as T).t === x.t) return
  xs.splice(i, 0, x)
}

/** Adds a committed scalar sample to the window of its series; metrics no rule looks at are ignored. */
export function addScalar(u: UserState, metric: number, t: number, value: number): void {
  if (metric === METRICS.hr) pushCompact(u.window.hr, { t, hr: value })
  else if (metric === METRICS.spo2) pushCompact(u.window.spo2, { t, v: value })
  // Steps are counts: merging them would lose the sample times that make a re-applied sample recognisable (the
  // first batch of a user is in the loaded window and applied again). Their window is only a few minutes long.
  else if (metric === METRICS.steps) pushSorted(u.window.steps, { t, v: value })
}

/**
 * Each series keeps what the rules look at: HR the whole window (10-minute sustained rules), SpO2, steps and positions
 * only `shortHorizonMs`. Both count back from the user's newest HR or position, not from the clock.
 */
export function trimWindow(w: Window, windowMs: number, shortHorizonMs: number): void {
  const latest = Math.max(w.hr[w.hr.length - 1]?.t ?? 0, w.pos[w.pos.length - 1]?.t ?? 0)
  const shortFrom = latest - shortHorizonMs
  trim(w.hr, latest - windowMs)
  trim(w.spo2, shortFrom)
  trim(w.steps, shortFrom)
  trim(w.pos, shortFrom)
}

/** Seconds per km over the minute of GPS before `now`; null when (nearly) standing. */
export function paceOf(u: UserState, now: number): number | null {
  const speed = recentSpeed(u.window.pos, now, 60_000)
  return speed !== null && speed > 0.3 ? Math.round(1000 / speed) : null
}
