// Error of the differentially private event statistics (events/{eid}/stats, `pulsegate stats event`) at a given ε:
// for synthetic marathons (default 50,000, 5,000 and 1,000 consenting runners, 2.5 h after the start), many releases
// of the real release code (src/insights/dp: cells, exact discrete Laplace noise from the CSPRNG, suppression,
// medians), compared with the exact counts of the same synthetic runners. No database: the error is the mechanism's,
// not the data path's. Prints, per histogram: cells, mean and 95th-percentile absolute error of the published cells,
// of all cells before suppression (the noise alone), the share of cells suppressed and the share of suppressed cells
// whose true count was at least the threshold; for the median pace per age band: mean and p95 absolute error in
// s/km against the true median and against the bucketed median without noise, and the share of bands suppressed.
// Synthetic runners come from a seeded generator (same runners every run); the noise is fresh every run.
// Run: npm run build && node dist/bench/dp-error.js [--runners 50000,5000,1000] [--releases 200] [--epsilon 0.5]
//      [--suppress-below 10] [--hours 2.5] [--json]
import { parseArgs } from 'node:util'
import {
  AGE_BANDS,
  ageBandOf,
  assignCells,
  countsOf,
  HISTOGRAMS,
  type HistogramName,
  layoutFor,
  PACE_BUCKETS,
  paceKey,
  type UserProgress,
} from '../src/insights/dp/cells.js'
import { formatEpsilon, parseEpsilon, share } from '../src/insights/dp/epsilon.js'
import { CryptoRandom } from '../src/insights/dp/noise.js'
import { medianFromBuckets, noisyCounts, publishCells } from '../src/insights/dp/release.js'
import { num, printHeaderAndExit, usage } from './lib/args.js'

const { values } = parseArgs({
  options: {
    runners: { type: 'string', default: '50000,5000,1000' },
    releases: { type: 'string', default: '200' },
    epsilon: { type: 'string', default: '0.5' },
    'suppress-below': { type: 'string', default: '10' },
    hours: { type: 'string', default: '2.5' },
    json: { type: 'boolean', default: false },
    help: { type: 'boolean', default: false },
  },
})
if (values.help) printHeaderAndExit(import.meta.url)
const SIZES = values.runners.split(',').map((s) => num('runners', s, 1))
const RELEASES = num('releases', values.releases, 1)
const SUPPRESS = num('suppress-below', values['suppress-below'], 0)
const HOURS = num('hours', values.hours, 0.1)
const EPS = (() => {
  try {
    return parseEpsilon(values.epsilon, '--epsilon')
  } catch (err) {
    usage((err as Error).message)
  }
})()
const COURSE = 42_195
const YEAR = 2026

/** mulberry32: a small seeded generator for the synthetic runners only (the noise uses node:crypto). */
function seeded(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function gauss(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand())
}

/** Runners of a marathon HOURS after the start: race pace log-normal around 5:45/km, ages 18–80 (4 % unknown). */
function marathon(n: number, seed: number): UserProgress[] {
  const rand = seeded(seed)
  const out: UserProgress[] = []
  for (let i = 0; i < n; i++) {
    const racePace = 345 * Math.exp(0.18 * gauss(rand))
    const distanceM = Math.min(COURSE, (HOURS * 3600 * 1000) / racePace)
    const finished = distanceM >= COURSE
    const moving = !finished && rand() > 0.02
    out.push({
      userId: `r${i}`,
      distanceM,
      birthYear: rand() < 0.04 ? null : YEAR - Math.floor(18 + 62 * rand() ** 1.3),
      hrBpm: finished && rand() < 0.5 ? null : Math.round(150 + 14 * gauss(rand)),
      paceSPerKm: moving ? Math.round(racePace * (1 + 0.06 * gauss(rand))) : null,
    })
  }
  return out
}

function quantile(xs: number[], q: number): number {
  if (xs.length === 0) return Number.NaN
  const s = [...xs].sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] as number
}
const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : Number.NaN)

function trueMedian(xs: number[]): number | null {
  if (xs.length === 0) return null
  const s = [...xs].sort((a, b) => a - b)
  const m = s.length >> 1
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2
}

interface CountRow {
  histogram: HistogramName
  cells: number
  medianTrueCount: number
  maePublished: number
  p95Published: number
  maeAll: number
  p95All: number
  suppressedShare: number
  suppressedAtLeastThreshold: number
}

interface MedianRow {
  band: string
  runners: number
  trueMedian: number | null
  maeVsTrue: number
  p95VsTrue: number
  maeVsBucketed: number
  suppressedShare: number
}

function scenario(n: number) {
  const users = marathon(n, 1234 + n)
  const layout = layoutFor(COURSE)
  const exact = countsOf(assignCells(users, layout, YEAR), layout)
  const epsH = share(EPS, HISTOGRAMS.length)
  const rng = new CryptoRandom()
  const errAll: Record<HistogramName, number[]> = { distance: [], hrZones: [], paceByAge: [] }
  const errPub: Record<string, number[]> = { distance: [], hrZones: [] }
  const suppressed: Record<string, number> = { distance: 0, hrZones: 0 }
  const suppressedBig: Record<string, number> = { distance: 0, hrZones: 0 }
  const medErr = new Map<string, { vsTrue: number[]; vsBucketed: number[]; suppressed: number }>()
  const bandPaces = new Map<string, number[]>()
  for (const u of users)
    if (u.paceSPerKm !== null) {
      const b = ageBandOf(u.birthYear, YEAR)
      const list = bandPaces.get(b) ?? []
      list.push(u.paceSPerKm)
      bandPaces.set(b, list)
    }
  const paceIndex = new Map(layout.paceByAge.map((k, i) => [k, i]))
  const bucketsOf = (counts: number[], band: string) =>
    Array.from(
      { length: PACE_BUCKETS },
      (_, b) => counts[paceIndex.get(paceKey(band as (typeof AGE_BANDS)[number], b)) as number] as number,
    )
  const truths = new Map(AGE_BANDS.map((b) => [b, trueMedian(bandPaces.get(b) ?? [])]))
  const bucketedMedians = new Map(AGE_BANDS.map((b) => [b, medianFromBuckets(bucketsOf(exact.paceByAge, b))]))
  let releaseMs = 0
  for (let r = 0; r < RELEASES; r++) {
    const started = performance.now()
    const noisy = noisyCounts(exact, epsH, rng)
    const { cells } = publishCells(noisy, layout, epsH, SUPPRESS)
    releaseMs += performance.now() - started
    for (const h of HISTOGRAMS)
      for (let i = 0; i < exact[h].length; i++)
        errAll[h].push(Math.abs((noisy[h][i] as number) - (exact[h][i] as number)))
    layout.distance.forEach((key, i) => {
      const pub = key === 'finished' ? cells.finishers : cells.segments[key]
      const truth = exact.distance[i] as number
      if (pub === null || pub === undefined) {
        suppressed.distance = (suppressed.distance ?? 0) + 1
        if (truth >= SUPPRESS) suppressedBig.distance = (suppressedBig.distance ?? 0) + 1
      } else errPub.distance?.push(Math.abs(pub - truth))
    })
    layout.hrZones.forEach((key, i) => {
      const pub = cells.hrZones[key]
      const truth = exact.hrZones[i] as number
      if (pub === null || pub === undefined) {
        suppressed.hrZones = (suppressed.hrZones ?? 0) + 1
        if (truth >= SUPPRESS) suppressedBig.hrZones = (suppressedBig.hrZones ?? 0) + 1
      } else errPub.hrZones?.push(Math.abs(pub - truth))
    })
    for (const band of AGE_BANDS) {
      const e = medErr.get(band) ?? { vsTrue: [], vsBucketed: [], suppressed: 0 }
      medErr.set(band, e)
      const pub = cells.medianPaceByAge[band]
      const truth = truths.get(band) ?? null
      const bucketed = bucketedMedians.get(band) ?? null
      if (!pub || truth === null) {
        e.suppressed++
        continue
      }
      e.vsTrue.push(Math.abs(pub.medianSPerKm - truth))
      if (bucketed !== null) e.vsBucketed.push(Math.abs(pub.medianSPerKm - bucketed))
    }
  }
  const counts: CountRow[] = (['distance', 'hrZones'] as const).map((h) => ({
    histogram: h,
    cells: exact[h].length,
    medianTrueCount: quantile(exact[h], 0.5),
    maePublished: mean(errPub[h] ?? []),
    p95Published: quantile(errPub[h] ?? [], 0.95),
    maeAll: mean(errAll[h]),
    p95All: quantile(errAll[h], 0.95),
    suppressedShare: (suppressed[h] ?? 0) / (RELEASES * exact[h].length),
    suppressedAtLeastThreshold: (suppressedBig[h] ?? 0) / Math.max(1, suppressed[h] ?? 0),
  }))
  counts.push({
    histogram: 'paceByAge',
    cells: exact.paceByAge.length,
    medianTrueCount: quantile(exact.paceByAge, 0.5),
    maePublished: Number.NaN,
    p95Published: Number.NaN,
    maeAll: mean(errAll.paceByAge),
    p95All: quantile(errAll.paceByAge, 0.95),
    suppressedShare: Number.NaN,
    suppressedAtLeastThreshold: Number.NaN,
  })
  const medians: MedianRow[] = AGE_BANDS.map((band) => {
    const e = medErr.get(band) as { vsTrue: number[]; vsBucketed: number[]; suppressed: number }
    return {
      band,
      runners: bandPaces.get(band)?.length ?? 0,
      trueMedian: trueMedian(bandPaces.get(band) ?? []),
      maeVsTrue: mean(e.vsTrue),
      p95VsTrue: quantile(e.vsTrue, 0.95),
      maeVsBucketed: mean(e.vsBucketed),
      suppressedShare: e.suppressed / RELEASES,
    }
  })
  return { runners: n, msPerRelease: releaseMs / RELEASES, counts, medians }
}

const f = (x: number, d = 1) => (Number.isNaN(x) ? '—' : x.toFixed(d))
const pct = (x: number) => (Number.isNaN(x) ? '—' : `${(100 * x).toFixed(1)} %`)
const results = SIZES.map(scenario)
if (values.json) console.log(JSON.stringify({ epsilon: formatEpsilon(EPS), releases: RELEASES, results }, null, 2))
else {
  console.log(
    `ε = ${formatEpsilon(EPS)} per release (${share(EPS, HISTOGRAMS.length).num}/${share(EPS, HISTOGRAMS.length).den} ` +
      `per histogram, noise scale ${f(HISTOGRAMS.length / (EPS / 1e6), 1)}), suppress below ${SUPPRESS}, ` +
      `${RELEASES} releases per scenario, ` +
      `marathon ${HOURS} h after the start`,
  )
  for (const r of results) {
    console.log(`\n${r.runners} runners (${f(r.msPerRelease, 2)} ms per release of the noise and post-processing)`)
    console.log(
      'histogram   cells  median true  MAE pub  p95 pub  MAE all  p95 all  suppressed  of which true ≥ threshold',
    )
    for (const c of r.counts)
      console.log(
        `${c.histogram.padEnd(10)} ${String(c.cells).padStart(6)} ${f(c.medianTrueCount, 0).padStart(12)} ` +
          `${f(c.maePublished, 2).padStart(8)} ${f(c.p95Published, 0).padStart(8)} ${f(c.maeAll, 2).padStart(8)} ` +
          `${f(c.p95All, 0).padStart(8)} ${pct(c.suppressedShare).padStart(11)} ${pct(c.suppressedAtLeastThreshold).padStart(12)}`,
      )
    console.log('median pace  band     runners  true s/km  MAE s/km  p95 s/km  MAE vs bucketed  suppressed')
    for (const m of r.medians)
      console.log(
        `             ${m.band.padEnd(8)} ${String(m.runners).padStart(7)} ${f(m.trueMedian ?? Number.NaN, 0).padStart(10)} ` +
          `${f(m.maeVsTrue, 1).padStart(9)} ${f(m.p95VsTrue, 0).padStart(9)} ${f(m.maeVsBucketed, 1).padStart(16)} ` +
          `${pct(m.suppressedShare).padStart(11)}`,
      )
  }
}
