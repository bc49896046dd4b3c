// One differentially private release of an event's statistics: exact cell counts (cells.ts) → discrete Laplace noise
// (noise.ts) → post-processing (suppression, medians). Only the noisy counts are ever read after the noise is added,
// so everything after it is post-processing and costs no privacy.
//
// Accounting: a release spends ε (config dp.epsilonPerRelease) in total, split evenly over its three histograms
// (ε/3 each). Each runner is in at most one cell of each histogram, so each histogram has L1 sensitivity 1 under
// adding or removing one runner, discrete Laplace noise of scale 3/ε per cell makes it ε/3-DP, and the three compose
// to ε per release (sequential composition); the ledger adds the releases up per event and day.
import { z } from 'zod'
import {
  AGE_BANDS,
  type Assignment,
  assignCells,
  type CellLayout,
  countsOf,
  HISTOGRAMS,
  type HistogramName,
  layoutFor,
  PACE_BUCKETS,
  PACE_MIN_S,
  PACE_STEP_S,
  paceKey,
  type UserProgress,
} from './cells.js'
import { epsilonNumber, type Fraction, type MicroEpsilon, share } from './epsilon.js'
import { type CryptoRandom, defaultRandom, discreteLaplaceMath, noiseVector } from './noise.js'

const medianCellSchema = z.object({
  /** noisy number of runners in the band (sum of its noisy pace cells) */
  n: z.number(),
  medianSPerKm: z.number(),
})
export type MedianCell = z.infer<typeof medianCellSchema>

const statsCellsSchema = z.object({
  /** runners on the course, by 5 km segment of their current distance */
  segments: z.record(z.string(), z.number().nullable()),
  /** runners past the course distance; absent when the event has no course length */
  finishers: z.number().nullable().optional(),
  /** runners by zone of their last-minute mean HR */
  hrZones: z.record(z.string(), z.number().nullable()),
  /** median pace over the last minute per age band, read from a noisy histogram of 15 s/km buckets */
  medianPaceByAge: z.record(z.string(), medianCellSchema.nullable()),
})
export type StatsCells = z.infer<typeof statsCellsSchema>

const statsEpsilonSchema = z.object({
  /** ε this release spent */
  release: z.number(),
  /** ε of each of its histograms (release / 3) */
  perHistogram: z.number(),
  spentToday: z.number(),
  remainingToday: z.number(),
  budgetPerDay: z.number(),
  /** the ledger's day (UTC) */
  day: z.string(),
})
export type StatsEpsilon = z.infer<typeof statsEpsilonSchema>

/** The message on `events/{eid}/stats` and what `pulsegate stats event` prints; the type is inferred from it. */
export const statsMessageSchema = z
  .object({
    eventId: z.string(),
    t: z.number().describe('epoch milliseconds'),
    epsilon: statsEpsilonSchema,
    cells: statsCellsSchema,
    /** cells withheld because their noisy count was below suppressBelow (or, for medians, too noisy to read) */
    suppressed: z.array(z.string()),
    suppressBelow: z.number(),
    method: z.literal('discrete-laplace'),
    sensitivity: z.literal(1),
  })
  .describe('differentially private aggregates of an event (noisy counts; suppressed cells are null)')
export type StatsMessage = z.infer<typeof statsMessageSchema>

/** A release before its ε is spent: everything but the ledger figures. */
export type DraftRelease = Omit<StatsMessage, 'epsilon'> & { epsilonMicro: MicroEpsilon }

export interface ReleaseOptions {
  epsilon: MicroEpsilon
  suppressBelow: number
  /** calendar year for ages (birth years → age bands, max HR) */
  year: number
  t: number
  rng?: CryptoRandom
}

/** The noisy counts of each histogram, in layout order. Exposed for the benches and the tests of the accounting. */
export function noisyCounts(
  exact: Record<HistogramName, number[]>,
  epsH: Fraction,
  rng: CryptoRandom = defaultRandom,
): Record<HistogramName, number[]> {
  const out = {} as Record<HistogramName, number[]>
  for (const h of HISTOGRAMS) {
    const noise = noiseVector(exact[h].length, epsH, rng)
    out[h] = exact[h].map((c, i) => c + (noise[i] as number))
  }
  return out
}

/**
 * A band's median is read only when the band's noisy size clearly exceeds the noise in it: the size is the sum of
 * PACE_BUCKETS noisy cells, whose standard deviation is √PACE_BUCKETS · σ_cell. Below twice that (or below
 * suppressBelow), the "median" of an empty band would be a median of noise. Depends only on ε: post-processing.
 */
export function medianThreshold(epsH: Fraction, suppressBelow: number): number {
  const sd = Math.sqrt(PACE_BUCKETS * discreteLaplaceMath.variance(epsH.num / epsH.den))
  return Math.max(suppressBelow, Math.ceil(2 * sd))
}

/** The median of a noisy histogram of pace buckets: negative cells count as 0; linear within the bucket. */
export function medianFromBuckets(noisy: readonly number[]): number | null {
  const c = noisy.map((x) => Math.max(0, x))
  const total = c.reduce((a, b) => a + b, 0)
  if (total <= 0) return null
  const half = total / 2
  let cum = 0
  for (let i = 0; i < c.length; i++) {
    const ci = c[i] as number
    if (ci > 0 && cum + ci >= half) {
      // bucket i spans [PACE_MIN_S + (i−1)·step, … + step); the end buckets are read as if one step wide
      const lo = PACE_MIN_S + (i - 1) * PACE_STEP_S
      return Math.round(lo + ((half - cum) / ci) * PACE_STEP_S)
    }
    cum += ci
  }
  return null
}

/** Suppression and medians from the noisy counts: the published cells. */
export function publishCells(
  noisy: Record<HistogramName, number[]>,
  layout: CellLayout,
  epsH: Fraction,
  suppressBelow: number,
): { cells: StatsCells; suppressed: string[] } {
  const suppressed: string[] = []
  const keep = (path: string, v: number): number | null => {
    if (v >= suppressBelow && v >= 0) return v
    suppressed.push(path)
    return null
  }
  const segments: Record<string, number | null> = {}
  let finishers: number | null | undefined
  layout.distance.forEach((key, i) => {
    const v = noisy.distance[i] as number
    if (key === 'finished') finishers = keep('finishers', v)
    else segments[key] = keep(`segments.${key}`, v)
  })
  const hrZones: Record<string, number | null> = {}
  layout.hrZones.forEach((key, i) => {
    hrZones[key] = keep(`hrZones.${key}`, noisy.hrZones[i] as number)
  })
  const threshold = medianThreshold(epsH, suppressBelow)
  const medianPaceByAge: Record<string, MedianCell | null> = {}
  const index = new Map(layout.paceByAge.map((k, i) => [k, i]))
  for (const band of AGE_BANDS) {
    const buckets: number[] = []
    for (let b = 0; b < PACE_BUCKETS; b++)
      buckets.push(noisy.paceByAge[index.get(paceKey(band, b)) as number] as number)
    const n = buckets.reduce((a, x) => a + x, 0)
    const median = n >= threshold ? medianFromBuckets(buckets) : null
    if (median === null) {
      suppressed.push(`medianPaceByAge.${band}`)
      medianPaceByAge[band] = null
    } else medianPaceByAge[band] = { n, medianSPerKm: median }
  }
  const cells: StatsCells = { segments, hrZones, medianPaceByAge }
  if (finishers !== undefined) cells.finishers = finishers
  return { cells, suppressed }
}

export interface BuiltRelease {
  draft: DraftRelease
  /** who is in which cell: for tests of the contribution bound; never published or logged */
  assignment: Assignment
}

/** Builds one release from the consenting runners' progress. */
export function buildRelease(
  eventId: string,
  courseM: number | null,
  users: readonly UserProgress[],
  opts: ReleaseOptions,
): BuiltRelease {
  const layout = layoutFor(courseM)
  const assignment = assignCells(users, layout, opts.year)
  const epsH = share(opts.epsilon, HISTOGRAMS.length)
  const noisy = noisyCounts(countsOf(assignment, layout), epsH, opts.rng)
  const { cells, suppressed } = publishCells(noisy, layout, epsH, opts.suppressBelow)
  return {
    draft: {
      eventId,
      t: opts.t,
      epsilonMicro: opts.epsilon,
      cells,
      suppressed,
      suppressBelow: opts.suppressBelow,
      method: 'discrete-laplace',
      sensitivity: 1,
    },
    assignment,
  }
}

/** The message once the ledger has accepted the spend. */
export function finalize(
  draft: DraftRelease,
  ledger: { spent: MicroEpsilon; budget: MicroEpsilon; day: string },
): StatsMessage {
  const { epsilonMicro, ...rest } = draft
  return {
    eventId: rest.eventId,
    t: rest.t,
    epsilon: {
      release: epsilonNumber(epsilonMicro),
      perHistogram: Number((epsilonNumber(epsilonMicro) / HISTOGRAMS.length).toPrecision(6)),
      spentToday: epsilonNumber(ledger.spent),
      remainingToday: epsilonNumber(Math.max(0, ledger.budget - ledger.spent)),
      budgetPerDay: epsilonNumber(ledger.budget),
      day: ledger.day,
    },
    cells: rest.cells,
    suppressed: rest.suppressed,
    suppressBelow: rest.suppressBelow,
    method: rest.method,
    sensitivity: rest.sensitivity,
  }
}
