// One event's release end to end, shared by the broker's publisher and the operator's `pulsegate stats event`:
// progress of the consenting runners (source.ts) → noisy cells (release.ts) → ε spent in the ledger, the release
// recorded (ledger.ts) → the message. Nothing is returned (or published) unless the ledger accepted the spend.
import type { Db } from '../../store/db.js'
import { AGE_BANDS, HISTOGRAMS, layoutFor } from './cells.js'
import { formatEpsilon, type MicroEpsilon, parseEpsilon } from './epsilon.js'
import { type Series, type SpendOutcome, spend, today } from './ledger.js'
import { buildRelease, finalize, type StatsMessage } from './release.js'
import { type ConsentReader, type EventInfo, ProgressSource } from './source.js'

/** The dp section of broker.config.ts, as the release needs it. */
export interface DpSettings {
  enabled: boolean
  epsilonPerRelease: number | string
  budgetPerDay: number | string
  intervalMs: number
  suppressBelow: number
  eventWindowMs: number
}

export interface ReleaseRequest {
  event: EventInfo
  epsilon: MicroEpsilon
  budget: MicroEpsilon
  suppressBelow: number
  series: Series
  minIntervalMs?: number
  consent?: ConsentReader
  now?: number
}

export async function releaseEvent(
  db: Db,
  source: ProgressSource,
  req: ReleaseRequest,
): Promise<SpendOutcome<StatsMessage>> {
  const now = req.now ?? Date.now()
  const users = await source.progress(req.event, now, req.consent)
  const { draft } = buildRelease(req.event.eventId, req.event.courseM, users, {
    epsilon: req.epsilon,
    suppressBelow: req.suppressBelow,
    year: new Date(now).getUTCFullYear(),
    t: now,
  })
  return spend(db, {
    eventId: req.event.eventId,
    epsilon: req.epsilon,
    budget: req.budget,
    series: req.series,
    ...(req.minIntervalMs !== undefined ? { minIntervalMs: req.minIntervalMs } : {}),
    build: (after) => finalize(draft, after),
  })
}

export class StatsError extends Error {}
/** The release would pass the day's budget: nothing was spent or released. */
export class BudgetExceededError extends StatsError {}

export interface DryRun {
  eventId: string
  dryRun: true
  /** would the ledger accept this release now */
  allowed: boolean
  wouldSpend: string
  ledger: { day: string; spentToday: string; remainingToday: string; budgetPerDay: string }
  /** the cells a release would have (names only) */
  layout: { histograms: readonly string[]; distance: string[]; hrZones: readonly string[]; paceCellsPerBand: number }
}

/**
 * `pulsegate stats event`: an operator release from the same ledger. A dry run reads no data at all: a noisy release
 * that spends nothing would be an unmetered query, and averaging enough of them gives the exact counts back.
 */
export async function operatorRelease(
  db: Db,
  settings: DpSettings,
  eventId: string,
  opts: { epsilon?: string; dryRun?: boolean; consent?: ConsentReader } = {},
): Promise<StatsMessage | DryRun> {
  const source = new ProgressSource(db)
  const event = await source.event(eventId)
  if (!event) throw new StatsError(`unknown event ${eventId}`)
  const epsilon = parseEpsilon(opts.epsilon ?? settings.epsilonPerRelease, '--epsilon')
  const budget = parseEpsilon(settings.budgetPerDay, 'dp.budgetPerDay')
  if (opts.dryRun) {
    const day = await today(db, eventId, budget)
    const layout = layoutFor(event.courseM)
    return {
      eventId,
      dryRun: true,
      allowed: day.spent + epsilon <= budget,
      wouldSpend: formatEpsilon(epsilon),
      ledger: {
        day: day.day,
        spentToday: formatEpsilon(day.spent),
        remainingToday: formatEpsilon(Math.max(0, budget - day.spent)),
        budgetPerDay: formatEpsilon(budget),
      },
      layout: {
        histograms: HISTOGRAMS,
        distance: layout.distance,
        hrZones: layout.hrZones,
        paceCellsPerBand: layout.paceByAge.length / AGE_BANDS.length,
      },
    }
  }
  const out = await releaseEvent(db, source, {
    event,
    epsilon,
    budget,
    suppressBelow: settings.suppressBelow,
    series: 'operator',
    ...(opts.consent ? { consent: opts.consent } : {}),
  })
  if (!out.ok)
    throw new BudgetExceededError(
      `privacy budget of event ${eventId} for ${out.day} would be exceeded: spent ${formatEpsilon(out.spent)} of ` +
        `${formatEpsilon(budget)}, this release needs ${formatEpsilon(epsilon)}`,
    )
  return out.value
}
