// Alert episodes: the rules' findings on a user's window open and resolve episodes. Each change is written to the
// `alerts` table before its message is published (the alert a user sees always exists with its id), and the partial
// unique index on open episodes lets only one broker process open a given episode.
import crypto from 'node:crypto'
import type { Metrics } from '../metrics.js'
import type { Publisher } from '../pipeline/ingest.js'
import type { Queryable } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'
import type { ConsentGate } from './consent-gate.js'
import type { AlertMessage } from './payloads.js'
import { medicsOverrideZones } from './positions.js'
import { evaluate, type Finding, type RuleSettings } from './rules.js'
import type { OpenEpisode, UserState } from './user-state.js'
import { NO_ZONES, type ZoneGate } from './zone-gate.js'

export interface EpisodeSettings {
  rules: RuleSettings
  /** after an episode resolves, the same kind does not reopen for this long */
  cooldownMs: number
}

export class Episodes {
  constructor(
    private readonly db: Queryable,
    private readonly publisher: Publisher,
    private readonly consent: Pick<ConsentGate, 'allows'>,
    private readonly metrics: Pick<Metrics, 'alertsOpened' | 'alertsResolved' | 'outputsWithheld'>,
    private readonly settings: EpisodeSettings,
    private readonly zones: Pick<ZoneGate, 'withheld'> = NO_ZONES,
  ) {}

  /** Evaluates the rules on the user's window as of `now` (its newest sample) and opens or resolves episodes. */
  async review(u: UserState, now: number): Promise<void> {
    const findings = evaluate(u.window, {
      now,
      inRace: u.event !== null,
      profile: u.profile,
      settings: this.settings.rules,
    })
    for (const f of findings) await this.settle(u, f)
  }

  /** Opens or resolves the episode of one finding (the rules' or the silent-runner check's). */
  async settle(u: UserState, f: Finding): Promise<void> {
    const open = u.open.get(f.kind)
    if (f.active && !open) {
      const cooled = (u.resolvedAt.get(f.kind) ?? 0) + this.settings.cooldownMs
      if (f.t < cooled) return
      const ep: OpenEpisode = {
        id: crypto.randomUUID(),
        kind: f.kind,
        severity: f.severity,
        openedAt: f.t,
        deviceId: u.lastDeviceId,
        eventId: u.event?.eventId ?? null,
      }
      // Persist first: the alert a user sees always exists in the database with its id.
      const res = await this.db.query(
        `INSERT INTO alerts (id, user_id, device_id, event_id, kind, severity, opened_at, evidence)
         VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7 / 1000.0), $8) ON CONFLICT DO NOTHING`,
        [ep.id, u.userId, ep.deviceId, ep.eventId, ep.kind, ep.severity, ep.openedAt, JSON.stringify(f.evidence)],
      )
      if (res.rowCount === 0) return // another broker process opened this episode
      u.open.set(f.kind, ep)
      this.metrics.alertsOpened.inc({ kind: f.kind })
      this.publish(u, ep, 'opened', null, f.t, f.evidence)
    } else if (!f.active && open) {
      await this.db.query('UPDATE alerts SET resolved_at = to_timestamp($2 / 1000.0) WHERE id = $1', [open.id, f.t])
      u.open.delete(f.kind)
      u.resolvedAt.set(f.kind, f.t)
      this.metrics.alertsResolved.inc({ kind: f.kind })
      this.publish(u, open, 'resolved', f.t, f.t, f.evidence)
    }
  }

  /** To the user's alerts and, during an event and unless they withdrew `medical_alerts`, to the event's medics. */
  private publish(
    u: UserState,
    ep: OpenEpisode,
    state: 'opened' | 'resolved',
    resolvedAt: number | null,
    t: number,
    evidence: Record<string, number | null>,
  ): void {
    const msg: AlertMessage = {
      id: ep.id,
      kind: ep.kind,
      severity: ep.severity,
      state,
      userId: u.userId,
      deviceId: ep.deviceId,
      eventId: ep.eventId,
      openedAt: ep.openedAt,
      resolvedAt,
      evidence: { t, ...evidence },
    }
    const payload = JSON.stringify(msg)
    this.publisher.publish(topicFor.userAlerts(u.userId), payload, 1, false)
    if (!ep.eventId) return
    // Asked at publish time, so a withdrawal stops the medics' copies from the next alert on.
    if (this.consent.allows(u.userId, 'medical_alerts'))
      this.publisher.publish(topicFor.eventAlerts(ep.eventId), this.forMedics(u, msg) ?? payload, 1, false)
    else this.metrics.outputsWithheld.inc({ output: 'event_alerts', reason: 'consent' })
  }

  /**
   * The medics' copy without the position when it lies in one of the runner's privacy zones and the runner has no
   * open alert (an opening alert is open: medics get its position whatever the zones); null: send the user's copy.
   */
  private forMedics(u: UserState, msg: AlertMessage): string | null {
    const { lat, lon } = msg.evidence
    if (lat === undefined || lat === null || lon === undefined || lon === null) return null
    if (medicsOverrideZones(u, this.consent)) return null
    if (!this.zones.withheld(u.userId, lat, lon)) return null
    this.metrics.outputsWithheld.inc({ output: 'event_alerts', reason: 'privacy_zone' })
    const { lat: _lat, lon: _lon, ...evidence } = msg.evidence
    return JSON.stringify({ ...msg, evidence })
  }
}
