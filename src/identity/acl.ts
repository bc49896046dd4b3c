// Who may publish or subscribe to what: docs/contract.md's topic table, per role, with the caller's ids substituted.
// Non-admins subscribe to exact topics only: no wildcard can ever reach another person's data or a firehose.
import { hasWildcard, INBOUND_USER_LEAVES, parseTopic, type TopicRef } from '../topics/grammar.js'
import type { Principal } from './principal.js'

/** Registry look-ups the ACL needs; cached by the caller where it matters. */
export interface AclLookups {
  deviceOwner(deviceId: string): Promise<{ userId: string; deviceKey: number } | null>
  isParticipant(eventId: string, userId: string): Promise<boolean>
  eventIsPublic(eventId: string): Promise<boolean>
}

export type AclDecision = { ok: true; ref: TopicRef | null } | { ok: false; reason: string }

const allow = (ref: TopicRef | null): AclDecision => ({ ok: true, ref })
const deny = (reason: string): AclDecision => ({ ok: false, reason })

async function ownsDevice(p: Principal, deviceId: string, lookups: AclLookups): Promise<boolean> {
  if (p.role === 'device') return p.deviceId === deviceId
  if (!p.userId) return false
  const owner = await lookups.deviceOwner(deviceId)
  return owner !== null && owner.userId === p.userId
}

export async function canPublish(p: Principal, topic: string, lookups: AclLookups): Promise<AclDecision> {
  // Aedes' default authorizePublish refuses $SYS; ours replaces it, so it must too (for every role).
  if (topic.startsWith('$')) return deny('reserved_topic')
  const ref = parseTopic(topic)
  if (p.role === 'admin') return allow(ref)
  if (!ref) return deny('unknown_topic')
  switch (ref.kind) {
    case 'device':
      if (ref.leaf !== 'readings' && ref.leaf !== 'status') return deny('outbound_topic')
      if (p.role === 'device') return p.deviceId === ref.deviceId ? allow(ref) : deny('not_your_device')
      if (p.role === 'bridge')
        return (await ownsDevice(p, ref.deviceId, lookups)) ? allow(ref) : deny('not_your_device')
      return deny('role_cannot_publish_readings')
    case 'user':
      if (!INBOUND_USER_LEAVES.has(ref.leaf)) return deny('outbound_topic')
      if (p.userId !== ref.userId || (p.role !== 'app' && p.role !== 'bridge')) return deny('not_your_user')
      // Consent and preferences are the person's own decisions, taken in their app; a bridge relays sensor data.
      if (ref.leaf !== 'sync/request' && p.role !== 'app') return deny('app_only_topic')
      return allow(ref)
    case 'event':
      return deny('outbound_topic')
  }
}

export async function canSubscribe(p: Principal, filter: string, lookups: AclLookups): Promise<AclDecision> {
  if (p.role === 'admin') return allow(null)
  if (filter.startsWith('$')) return deny('reserved_topic')
  if (hasWildcard(filter)) return deny('wildcard')
  const ref = parseTopic(filter)
  if (!ref) return deny('unknown_topic')
  switch (ref.kind) {
    case 'device': {
      if (ref.leaf === 'readings' || ref.leaf === 'status') return deny('inbound_topic')
      if (p.role === 'device') return p.deviceId === ref.deviceId ? allow(ref) : deny('not_your_device')
      // Owners (app or bridge) see their device's rejections; the bridge also relays its config to the tracker.
      if (p.role === 'app' && ref.leaf !== 'rejections') return deny('device_only_topic')
      if (p.role === 'app' || p.role === 'bridge') {
        return (await ownsDevice(p, ref.deviceId, lookups)) ? allow(ref) : deny('not_your_device')
      }
      return deny('not_your_device')
    }
    case 'user':
      if (INBOUND_USER_LEAVES.has(ref.leaf)) return deny('inbound_topic')
      if ((p.role === 'app' || p.role === 'bridge') && p.userId === ref.userId) return allow(ref)
      return deny('not_your_user')
    case 'event': {
      if (p.role === 'medic') return p.events.includes(ref.eventId) ? allow(ref) : deny('not_your_event')
      // Alerts and the runners' positions (the race-control map) are for the event's medics only.
      if (ref.leaf === 'alerts' || ref.leaf === 'positions') return deny('medics_only')
      if (p.role === 'device') return deny('not_your_event')
      if (p.userId && (await lookups.isParticipant(ref.eventId, p.userId))) return allow(ref)
      return (await lookups.eventIsPublic(ref.eventId)) ? allow(ref) : deny('not_your_event')
    }
  }
}
