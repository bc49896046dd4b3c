// The topic grammar of docs/contract.md, parsed once per packet. Anything that does not parse is refused by the ACL.
export const ID_RE = /^[A-Za-z0-9_-]{1,64}$/

export type DeviceLeaf = 'readings' | 'status' | 'rejections' | 'config'
export type UserLeaf =
  | 'alerts'
  | 'live'
  | 'recommendations'
  | 'sync/request'
  | 'sync/response'
  | 'consent'
  | 'consent/state'
  | 'preferences'
  | 'preferences/state'
export type EventLeaf = 'leaderboard' | 'alerts' | 'stats' | 'positions'

export type TopicRef =
  | { kind: 'device'; deviceId: string; leaf: DeviceLeaf }
  | { kind: 'user'; userId: string; leaf: UserLeaf }
  | { kind: 'event'; eventId: string; leaf: EventLeaf }

const DEVICE_LEAVES = new Set<string>(['readings', 'status', 'rejections', 'config'])
const USER_LEAVES = new Set<string>(['alerts', 'live', 'recommendations', 'consent', 'preferences'])
/** users/{id}/{leaf}/{sub}: a request and its answer, or a setting and its retained state */
const USER_SUBLEAVES = new Map<string, ReadonlySet<string>>([
  ['sync', new Set(['request', 'response'])],
  ['consent', new Set(['state'])],
  ['preferences', new Set(['state'])],
])
/** User topics a client publishes to (the rest are the broker's outputs). */
export const INBOUND_USER_LEAVES: ReadonlySet<UserLeaf> = new Set<UserLeaf>(['sync/request', 'consent', 'preferences'])
const EVENT_LEAVES = new Set<string>(['leaderboard', 'alerts', 'stats', 'positions'])

/** Every topic of the grammar as a template (`devices/{deviceId}/readings`, …): what docs/asyncapi.yaml must list. */
export function topicTemplates(): string[] {
  const out: string[] = []
  for (const leaf of DEVICE_LEAVES) out.push(`devices/{deviceId}/${leaf}`)
  for (const leaf of USER_LEAVES) out.push(`users/{userId}/${leaf}`)
  for (const [leaf, subs] of USER_SUBLEAVES) for (const sub of subs) out.push(`users/{userId}/${leaf}/${sub}`)
  for (const leaf of EVENT_LEAVES) out.push(`events/{eventId}/${leaf}`)
  return out
}

export function isValidId(id: string): boolean {
  return ID_RE.test(id)
}

/** Parses a concrete topic (no wildcards); null if it is not one of docs/contract.md's topics. */
export function parseTopic(topic: string): TopicRef | null {
  const parts = topic.split('/')
  const [root, id, leaf, sub] = parts
  if (id === undefined || leaf === undefined || !ID_RE.test(id)) return null
  if (parts.length === 3) {
    if (root === 'devices' && DEVICE_LEAVES.has(leaf)) return { kind: 'device', deviceId: id, leaf: leaf as DeviceLeaf }
    if (root === 'users' && USER_LEAVES.has(leaf)) return { kind: 'user', userId: id, leaf: leaf as UserLeaf }
    if (root === 'events' && EVENT_LEAVES.has(leaf)) return { kind: 'event', eventId: id, leaf: leaf as EventLeaf }
    return null
  }
  if (parts.length === 4 && root === 'users' && sub !== undefined && USER_SUBLEAVES.get(leaf)?.has(sub)) {
    return { kind: 'user', userId: id, leaf: `${leaf}/${sub}` as UserLeaf }
  }
  return null
}

export function hasWildcard(filter: string): boolean {
  return filter.includes('+') || filter.includes('#')
}

export const topicFor = {
  readings: (deviceId: string) => `devices/${deviceId}/readings`,
  status: (deviceId: string) => `devices/${deviceId}/status`,
  rejections: (deviceId: string) => `devices/${deviceId}/rejections`,
  config: (deviceId: string) => `devices/${deviceId}/config`,
  userAlerts: (userId: string) => `users/${userId}/alerts`,
  live: (userId: string) => `users/${userId}/live`,
  recommendations: (userId: string) => `users/${userId}/recommendations`,
  syncRequest: (userId: string) => `users/${userId}/sync/request`,
  syncResponse: (userId: string) => `users/${userId}/sync/response`,
  consent: (userId: string) => `users/${userId}/consent`,
  consentState: (userId: string) => `users/${userId}/consent/state`,
  preferences: (userId: string) => `users/${userId}/preferences`,
  preferencesState: (userId: string) => `users/${userId}/preferences/state`,
  leaderboard: (eventId: string) => `events/${eventId}/leaderboard`,
  eventAlerts: (eventId: string) => `events/${eventId}/alerts`,
  stats: (eventId: string) => `events/${eventId}/stats`,
  eventPositions: (eventId: string) => `events/${eventId}/positions`,
}

/**
 * Could this subscription filter receive an inbound device topic (`devices/{id}/readings` or `…/status`)? Those are
 * consumed by the pipeline and only routed while such a subscriber (an admin, for diagnostics) is connected.
 * Conservative: any literal in the id level counts, and `$share/{group}/` prefixes are looked through.
 */
export function filterMayMatchInbound(filter: string): boolean {
  let levels = filter.split('/')
  if (levels[0] === '$share' && levels.length > 2) levels = levels.slice(2)
  for (let i = 0; i < levels.length; i++) {
    const l = levels[i] as string
    if (l === '#') return true
    if (i >= 3) return false
    if (l === '+') continue
    if (i === 0 && l !== 'devices') return false
    if (i === 2 && l !== 'readings' && l !== 'status') return false
  }
  return levels.length === 3
}
