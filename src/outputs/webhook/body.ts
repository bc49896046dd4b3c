// What a push carries: enough for a notification ("an alert opened", "a recommendation is waiting") and for the app to
// fetch the rest over MQTT or delta sync when it opens. Pseudonymous ids only, and no position, evidence or message
// text: the body crosses the operator's push service and FCM/APNs. Documented in docs/outputs.md "Webhooks".
import type { Purpose } from '../../ops/consent-model.js'
import type { DeliveryKind } from './store.js'

export interface AlertPush {
  type: 'alert'
  deliveryId: string
  userId: string
  alert: {
    id: string
    kind: string
    severity: string
    state: string
    eventId: string | null
    openedAt: number
    resolvedAt: number | null
    /** the sample that triggered this state change */
    t: number | null
  }
}

export interface RecommendationPush {
  type: 'recommendation'
  deliveryId: string
  userId: string
  recommendation: { id: string; rule: string; priority: string; title: string; createdAt: string; expiresAt: string }
}

/** The consent purpose a push of this kind needs: alerts go by the safety purpose, recommendations by their own. */
export const PURPOSE_OF: Readonly<Record<DeliveryKind, Purpose>> = {
  alert: 'medical_alerts',
  recommendation: 'recommendations',
}

export interface Pushable {
  kind: DeliveryKind
  /** one push per alert state change or recommendation id */
  dedupeKey: string
  body: (deliveryId: string) => string
}

const TOPIC = /^users\/([A-Za-z0-9_-]{1,64})\/(alerts|recommendations)$/

/** The user a topic's push is for and its kind, or null when the topic is not pushed. */
export function pushTopic(topic: string): { userId: string; kind: DeliveryKind } | null {
  const m = TOPIC.exec(topic)
  if (!m?.[1]) return null
  return { userId: m[1], kind: m[2] === 'alerts' ? 'alert' : 'recommendation' }
}

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null)
const num = (v: unknown): number | null => (typeof v === 'number' && Number.isFinite(v) ? v : null)

/** The push for a published output message; throws on a message that is not one (counted as bad_payload). */
export function toPushable(kind: DeliveryKind, userId: string, payload: string | Buffer): Pushable {
  const m = JSON.parse(typeof payload === 'string' ? payload : payload.toString('utf8')) as Record<string, unknown>
  const id = str(m.id)
  if (!id) throw new Error('no id')
  if (kind === 'alert') {
    const state = str(m.state)
    const evidence = (m.evidence ?? {}) as Record<string, unknown>
    if (!state) throw new Error('no state')
    const alert = {
      id,
      kind: str(m.kind) ?? 'unknown',
      severity: str(m.severity) ?? 'info',
      state,
      eventId: str(m.eventId),
      openedAt: num(m.openedAt) ?? 0,
      resolvedAt: num(m.resolvedAt),
      t: num(evidence.t),
    }
    return {
      kind,
      dedupeKey: `alert:${id}:${state}`,
      body: (deliveryId) => JSON.stringify({ type: 'alert', deliveryId, userId, alert } satisfies AlertPush),
    }
  }
  const recommendation = {
    id,
    rule: str(m.rule) ?? 'unknown',
    priority: str(m.priority) ?? 'nudge',
    title: str(m.title) ?? '',
    createdAt: str(m.createdAt) ?? '',
    expiresAt: str(m.expiresAt) ?? '',
  }
  return {
    kind,
    dedupeKey: `recommendation:${id}`,
    body: (deliveryId) =>
      JSON.stringify({ type: 'recommendation', deliveryId, userId, recommendation } satisfies RecommendationPush),
  }
}
