// The broker's periodic statistics: every dp.intervalMs, for each event under way (starts_at ≤ now ≤ starts_at +
// dp.eventWindowMs, by the database's clock), one release on `events/{eid}/stats` (retained, QoS 0). When the day's
// budget is spent, releases stop (logged once per event and day, counted) and the last retained message stays; after
// a restart the last release recorded in the ledger is put back as the retained message.
//
// Which events get a release depends only on the events table (public metadata), never on whether anyone consented:
// skipping an event because nobody in it consents would itself reveal that.
import type { Logger } from '../../log.js'
import type { Metrics } from '../../metrics.js'
import type { Publisher } from '../../pipeline/ingest.js'
import type { Db } from '../../store/db.js'
import { topicFor } from '../../topics/grammar.js'
import { epsilonNumber, type MicroEpsilon, parseEpsilon } from './epsilon.js'
import { latestPayloads } from './ledger.js'
import { type ConsentReader, ProgressSource } from './source.js'
import { type DpSettings, releaseEvent } from './stats.js'

export class DpPublisher {
  private readonly source: ProgressSource
  private readonly epsilon: MicroEpsilon
  private readonly budget: MicroEpsilon
  private timer: NodeJS.Timeout | null = null
  private running: Promise<void> | null = null
  private stopped = false
  /** event → UTC day whose budget is spent: no more work for it until the day changes */
  private readonly exhausted = new Map<string, string>()

  constructor(
    private readonly db: Db,
    private readonly publisher: Publisher,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly settings: DpSettings,
    private readonly consent?: ConsentReader,
  ) {
    this.source = new ProgressSource(db)
    this.epsilon = parseEpsilon(settings.epsilonPerRelease, 'dp.epsilonPerRelease')
    this.budget = parseEpsilon(settings.budgetPerDay, 'dp.budgetPerDay')
  }

  start(): void {
    if (!this.settings.enabled) return
    if (this.epsilon > this.budget)
      this.log.warn(
        { epsilonPerRelease: epsilonNumber(this.epsilon), budgetPerDay: epsilonNumber(this.budget) },
        'dp.epsilonPerRelease is larger than dp.budgetPerDay: no statistics will ever be released',
      )
    // Counts as a round: the first release cannot be overwritten by an older restored one.
    this.running = this.restoreRetained().finally(() => {
      this.running = null
    })
    this.timer = setInterval(() => void this.tick(), this.settings.intervalMs)
    this.timer.unref()
  }

  async stop(): Promise<void> {
    this.stopped = true
    if (this.timer) clearInterval(this.timer)
    await this.running
  }

  /** One round over the events under way; a round still running when the next is due is not overlapped. */
  tick(): Promise<void> {
    if (this.stopped || this.running) return this.running ?? Promise.resolve()
    this.running = this.round()
      .catch((err: Error) => {
        this.metrics.dpFailures.inc()
        this.log.error({ err: err.message }, 'dp statistics round failed')
      })
      .finally(() => {
        this.running = null
      })
    return this.running
  }

  private async round(): Promise<void> {
    const events = await this.source.eventsInProgress(this.settings.eventWindowMs)
    this.source.retain(new Set(events.map((e) => e.eventId)))
    const day = new Date().toISOString().slice(0, 10)
    for (const event of events) {
      if (this.stopped) return
      if (this.exhausted.get(event.eventId) === day) continue
      const started = performance.now()
      const out = await releaseEvent(this.db, this.source, {
        event,
        epsilon: this.epsilon,
        budget: this.budget,
        suppressBelow: this.settings.suppressBelow,
        series: 'broker',
        // Brokers sharing the database release once per interval between them (the ledger row says when).
        minIntervalMs: Math.floor(this.settings.intervalMs / 2),
        ...(this.consent ? { consent: this.consent } : {}),
      })
      this.metrics.dpEpsilonSpent.set({ event: event.eventId }, epsilonNumber(out.spent))
      if (out.ok) {
        this.publisher.publish(topicFor.stats(event.eventId), JSON.stringify(out.value), 0, true)
        this.metrics.dpReleases.inc({ series: 'broker' })
        this.metrics.dpReleaseSeconds.observe((performance.now() - started) / 1000)
      } else if (out.reason === 'budget') {
        this.exhausted.set(event.eventId, out.day)
        this.metrics.dpBudgetRefusals.inc({ series: 'broker' })
        this.log.warn(
          { eventId: event.eventId, day: out.day, spent: epsilonNumber(out.spent), budget: epsilonNumber(this.budget) },
          'dp privacy budget of the day spent: no more statistics releases for this event today',
        )
      }
    }
  }

  /** Puts the last recorded release of each event under way back as its retained message (Aedes keeps them in memory). */
  private async restoreRetained(): Promise<void> {
    try {
      const events = await this.source.eventsInProgress(this.settings.eventWindowMs)
      const last = await latestPayloads(
        this.db,
        events.map((e) => e.eventId),
      )
      for (const [eventId, payload] of last)
        this.publisher.publish(topicFor.stats(eventId), JSON.stringify(payload), 0, true)
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'could not restore the last dp statistics messages')
    }
  }
}
