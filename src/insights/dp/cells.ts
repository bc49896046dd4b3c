// The cells of an event's statistics and who falls in which. Pure functions: the SQL that finds the consenting
// runners and their progress is in source.ts, the noise in noise.ts, the post-processing in release.ts.
//
// Contribution bound: a message holds three histograms, and each consenting runner is in at most one cell of each:
//   distance   — the 5 km segment of their current distance, or "finished" (distance ≥ the course); one partition, so
//                finishers are not also counted in the last segment;
//   hrZones    — the zone of their mean heart rate over the last minute, by percent of Tanaka's predicted max HR
//                (208 − 0.7·age; age 40 when unknown, as the live snapshot does): below50, z1 (50–60 %) … z5 (90 %+);
//   paceByAge  — (age band, pace bucket) of their pace over the last minute; the median per band is read from it.
// Runners without the data a histogram needs (no distance yet, no HR in the last minute, not moving) are in none of
// its cells. The set of cells depends only on the event (its course length), never on the data: a cell that exists
// only when someone is in it would reveal that someone is.
import { predictedMaxHr } from '../../outputs/rules.js'

export const SEGMENT_M = 5000
/** segments shown when the event has no course length: 0–50 km, then "50km+" */
const OPEN_COURSE_SEGMENTS = 10

export const HR_ZONES = ['below50', 'z1', 'z2', 'z3', 'z4', 'z5'] as const
export type HrZone = (typeof HR_ZONES)[number]

export const AGE_BANDS = ['<20', '20-29', '30-39', '40-49', '50-59', '60-69', '70+', 'unknown'] as const
export type AgeBand = (typeof AGE_BANDS)[number]

/** Pace buckets of 15 s/km from 2:30 to 12:00 per km; faster or slower paces are counted in the end buckets. */
export const PACE_MIN_S = 150
export const PACE_MAX_S = 720
export const PACE_STEP_S = 15
export const PACE_BUCKETS = (PACE_MAX_S - PACE_MIN_S) / PACE_STEP_S + 2

export const HISTOGRAMS = ['distance', 'hrZones', 'paceByAge'] as const
export type HistogramName = (typeof HISTOGRAMS)[number]

/** What one consenting runner contributes; computed from committed samples (source.ts). */
export interface UserProgress {
  userId: string
  /** metres covered since the event's start (sum of derived GPS distance) */
  distanceM: number
  /** mean heart rate over the last minute, bpm; null without HR samples in it */
  hrBpm: number | null
  birthYear: number | null
  /** pace over the last minute, s/km; null when not moving (< 0.3 m/s) or too few fixes */
  paceSPerKm: number | null
}

export interface CellLayout {
  courseM: number | null
  /** distance cells in order: the segments, then "finished" (course known) or "50km+" (course unknown) */
  distance: string[]
  hrZones: readonly string[]
  /** "<band>|<bucket index>" for every band and bucket */
  paceByAge: string[]
}

function km(m: number): string {
  return String(Math.round(m) / 1000)
}

export function segmentKey(i: number, courseM: number | null): string {
  const from = i * SEGMENT_M
  const to = courseM === null ? from + SEGMENT_M : Math.min(from + SEGMENT_M, courseM)
  return `${km(from)}-${km(to)}km`
}

export function paceKey(band: AgeBand, bucket: number): string {
  return `${band}|${bucket}`
}

export function layoutFor(courseM: number | null): CellLayout {
  const course = courseM !== null && courseM > 0 ? courseM : null
  const distance: string[] = []
  const n = course === null ? OPEN_COURSE_SEGMENTS : Math.ceil(course / SEGMENT_M)
  for (let i = 0; i < n; i++) distance.push(segmentKey(i, course))
  distance.push(course === null ? `${OPEN_COURSE_SEGMENTS * (SEGMENT_M / 1000)}km+` : 'finished')
  const paceByAge: string[] = []
  for (const band of AGE_BANDS) for (let b = 0; b < PACE_BUCKETS; b++) paceByAge.push(paceKey(band, b))
  return { courseM: course, distance, hrZones: HR_ZONES, paceByAge }
}

export function distanceCell(distanceM: number, layout: CellLayout): string {
  const last = layout.distance.length - 1
  if (layout.courseM !== null && distanceM >= layout.courseM) return layout.distance[last] as string
  const i = Math.min(Math.floor(distanceM / SEGMENT_M), last)
  return layout.distance[i] as string
}

/**
 * Zone by whole deciles of the predicted max HR, in integer arithmetic so a boundary (60 % exactly) always falls on
 * the same side: decile = ⌊10·hr / max⌋ with hr rounded to a whole bpm.
 */
export function hrZoneOf(hrBpm: number, birthYear: number | null, year: number): HrZone {
  const max = predictedMaxHr(birthYear === null ? null : year - birthYear)
  const decile = Math.floor((10 * Math.round(hrBpm)) / max)
  if (decile < 5) return 'below50'
  return HR_ZONES[Math.min(5, decile - 4)] as HrZone
}

export function ageBandOf(birthYear: number | null, year: number): AgeBand {
  if (birthYear === null) return 'unknown'
  const age = year - birthYear
  if (age < 20) return '<20'
  if (age >= 70) return '70+'
  return AGE_BANDS[Math.floor(age / 10) - 1] as AgeBand
}

/** Bucket 0: faster than 2:30/km; 1…n−2: [150 + 15(i−1), 150 + 15i); n−1: 12:00/km or slower. */
export function paceBucketOf(paceSPerKm: number): number {
  if (paceSPerKm < PACE_MIN_S) return 0
  if (paceSPerKm >= PACE_MAX_S) return PACE_BUCKETS - 1
  return 1 + Math.floor((paceSPerKm - PACE_MIN_S) / PACE_STEP_S)
}

/** Each histogram's cells with the users in them: each user appears at most once per histogram. */
export type Assignment = Record<HistogramName, Map<string, string[]>>

export function assignCells(users: readonly UserProgress[], layout: CellLayout, year: number): Assignment {
  const empty = (keys: readonly string[]) => new Map(keys.map((k) => [k, [] as string[]]))
  const out: Assignment = {
    distance: empty(layout.distance),
    hrZones: empty(layout.hrZones),
    paceByAge: empty(layout.paceByAge),
  }
  const seen = new Set<string>()
  for (const u of users) {
    // One row per user is the source's contract; a second row would be a second contribution, so it is dropped.
    if (seen.has(u.userId)) continue
    seen.add(u.userId)
    if (u.distanceM > 0) out.distance.get(distanceCell(u.distanceM, layout))?.push(u.userId)
    if (u.hrBpm !== null) out.hrZones.get(hrZoneOf(u.hrBpm, u.birthYear, year))?.push(u.userId)
    if (u.paceSPerKm !== null)
      out.paceByAge.get(paceKey(ageBandOf(u.birthYear, year), paceBucketOf(u.paceSPerKm)))?.push(u.userId)
  }
  return out
}

/** The exact counts, in layout order (what the noise is added to). */
export function countsOf(a: Assignment, layout: CellLayout): Record<HistogramName, number[]> {
  return {
    distance: layout.distance.map((k) => a.distance.get(k)?.length ?? 0),
    hrZones: layout.hrZones.map((k) => a.hrZones.get(k)?.length ?? 0),
    paceByAge: layout.paceByAge.map((k) => a.paceByAge.get(k)?.length ?? 0),
  }
}
