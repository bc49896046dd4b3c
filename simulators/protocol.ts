// What the swarm parent and its workers exchange: the slice of users/devices a worker drives, and the stats it
// reports back (cumulative counters, interval HDR histograms, and at the end the acked readings for verification).
import * as hdr from 'hdr-histogram-js'
import type { AppCopyWire } from './app-copy.js'
import type { AnomalyKind } from './physiology.js'

export type Scenario = 'marathon' | 'wellness'

/** Runs fn over items with at most `limit` in flight. */
export async function forEachLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let i = 0
  const next = async (): Promise<void> => {
    while (i < items.length) await fn(items[i++] as T)
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, next))
}
export type Format = 'cbor' | 'json'

export interface DeviceSpec {
  deviceId: string
  /** watch: everything the scenario samples; strap: a chest strap relayed by the phone (HR only) */
  kind: 'watch' | 'strap'
  certPath: string
  keyPath: string
}

export interface UserSpec {
  userId: string
  index: number
  seed: number
  /** its devices connect themselves (mTLS), or its phone relays them all (bridge JWT) */
  via: 'direct' | 'bridge'
  devices: DeviceSpec[]
  /** the phone app watching alerts and live; null = no app connected */
  app: { token: string; leaderboard: boolean } | null
  bridgeToken: string | null
  anomaly: { kind: AnomalyKind; atS: number; brady?: boolean } | null
  /** seconds after the start when this user's devices power on (the ramp) */
  startS: number
  /** cut the link at offline.atS for offline.forS (a tunnel): devices buffer meanwhile */
  offline: boolean
  dropOut: boolean
}

/**
 * The brokers to play against: one entry per node (a cluster addressed directly) or one (a single broker or a load
 * balancer). Connection i starts on entry i mod n and, after losing its link, tries the next one (as a device
 * behind a DNS name with several addresses would), so killing a node moves its devices to the others.
 */
export interface Target {
  mqtts: string[]
  ws: string[]
  /** plain MQTT for phone bridges; null → bridges use the WebSocket listeners */
  mqtt: string[] | null
  caPath: string
}

/** Entry `start + turn` of a broker list, round-robin. */
export function pick<T>(list: readonly T[], start: number, turn = 0): T {
  return list[(start + turn) % list.length] as T
}

export interface WorkerOptions {
  scenario: Scenario
  qos: 0 | 1
  batchEvery: number
  intervalMs: number
  format: Format
  inflight: number
  bufferSamples: number
  durationS: number
  drainS: number
  /** the drain also waits, within drainS, until every watched anomaly has its alert and the medic its copies */
  awaitAlerts: boolean
  eventId: string | null
  raceStartMs: number
  seed: number
  offline: { atS: number; forS: number } | null
  /** times each app drops its link during the run */
  appReconnects: number
  statsIntervalMs: number
  /** spread connections over 127.0.0.x source addresses (more than one ephemeral port range); loopback only */
  sourceAddresses: string[]
  /** devices sample from power-on, buffering until their first link is up (false: from the first link on) */
  sampleBeforeLink: boolean
  /** apps also subscribe to users/{uid}/recommendations and report each arrival (--history-days) */
  recommendations: boolean
}

export interface WorkerInit {
  workerIndex: number
  target: Target
  options: WorkerOptions
  users: UserSpec[]
  medic: { userId: string; token: string } | null
}

export const COUNTER_KEYS = [
  'devAttempts',
  'devConnects',
  'devFailures',
  'devRefused',
  'devLost',
  'devReconnects',
  'bridgeAttempts',
  'bridgeConnects',
  'bridgeFailures',
  'bridgeRefused',
  'bridgeLost',
  'bridgeReconnects',
  'appAttempts',
  'appConnects',
  'appFailures',
  'appRefused',
  'appLost',
  /** app links dropped on purpose (--app-reconnects); each reconnects and catches up by delta sync */
  'appDrops',
  'medicConnects',
  'medicFailures',
  'connected',
  'samplesGenerated',
  'readingsGenerated',
  'batchesSealed',
  'publishes',
  'republishes',
  'batchesAcked',
  'samplesAcked',
  'readingsAcked',
  'samplesDropped',
  'readingsDropped',
  'samplesBuffered',
  'bufferedPeak',
  'priorityBatches',
  'rejections',
  'readingsRejected',
  'rejectionsUnmapped',
  'configReceived',
  'configApplied',
  'alertsOpened',
  'alertsResolved',
  'alertsMatched',
  'alertsUnexpected',
  'medicAlerts',
  'liveReceived',
  'leaderboardReceived',
  /** links cut by the tunnel; of those, the ones that were up (each ends in a reconnect), the ones cut later than
   * planned (not up yet then), and the ones back up after */
  'offlineCuts',
  'offlineCutsWhileUp',
  'offlineCutsLate',
  'offlineRecovered',
  'bufferedWhileOffline',
] as const

export type CounterKey = (typeof COUNTER_KEYS)[number]
export type Counters = Record<CounterKey, number>

export function zeroCounters(): Counters {
  return Object.fromEntries(COUNTER_KEYS.map((k) => [k, 0])) as Counters
}

export function addCounters(into: Counters, from: Counters): void {
  for (const k of COUNTER_KEYS) into[k] += from[k]
}

/** Microsecond/millisecond latency histograms, 1 … 1 h, 3 significant digits. */
export function newHistogram(): hdr.Histogram {
  return hdr.build({
    bitBucketSize: 32,
    lowestDiscernibleValue: 1,
    highestTrackableValue: 3_600_000_000,
    numberOfSignificantValueDigits: 3,
    useWebAssembly: false,
  })
}

export function encodeHistogram(h: hdr.Histogram): string {
  return hdr.encodeIntoCompressedBase64(h)
}

export function decodeHistogram(b64: string): hdr.Histogram {
  return hdr.decodeFromCompressedBase64(b64, 32, false)
}

export interface HistogramSet {
  /** publish → PUBACK, µs */
  ackUs: string
  /** device publish of the triggering sample → app receives the alert, ms */
  alertMs: string
  /** sample time → app receives the live snapshot, ms */
  liveLagMs: string
}

/** metric code used in verification: 0 = a position, else the METRICS code of src/pipeline/types.ts */
export type ReadingMetric = 0 | 1 | 2 | 3 | 4 | 5 | 6

/**
 * A set of timestamps kept as arithmetic runs (t0, step, n): a device sampling steadily acks one run per metric,
 * so tens of thousands of devices' acked readings fit in a few kilobytes and expand in SQL (generate_series).
 */
export class TimeRuns {
  t0: number[] = []
  step: number[] = []
  n: number[] = []
  count = 0

  add(t: number): void {
    this.count++
    const i = this.n.length - 1
    if (i >= 0) {
      const n = this.n[i] as number
      const t0 = this.t0[i] as number
      if (n === 1 && t > t0) {
        this.step[i] = t - t0
        this.n[i] = 2
        return
      }
      if (n > 1 && t === t0 + (this.step[i] as number) * n) {
        this.n[i] = n + 1
        return
      }
    }
    this.t0.push(t)
    this.step.push(0)
    this.n.push(1)
  }
}

/** One device's acked (and rejected) readings, per metric. */
export interface DeviceReadings {
  deviceId: string
  acked: Partial<Record<ReadingMetric, TimeRuns>>
  rejected: Partial<Record<ReadingMetric, TimeRuns>>
}

/** The plain-data form sent over IPC. */
export interface RunsWire {
  deviceId: string
  metric: number
  rejected: boolean
  t0: number[]
  step: number[]
  n: number[]
}

export interface AnomalyOutcome {
  userId: string
  kind: AnomalyKind
  atMs: number
  /** alert kinds that arrived at the user's app for this user after the onset */
  alerts: string[]
  watched: boolean
}

/** A recommendation as an app received it. */
export interface RecommendationReceipt {
  userId: string
  id: string
  rule: string
  /** the payload's createdAt: the instant the rules were evaluated at */
  createdAt: number
  receivedAt: number
}

export interface StatsMessage {
  type: 'stats'
  workerIndex: number
  at: number
  counters: Counters
  alertKinds: Record<string, number>
  /** histograms of the interval since the previous stats message */
  interval: HistogramSet
}

export interface FinalMessage {
  type: 'final'
  workerIndex: number
  counters: Counters
  alertKinds: Record<string, number>
  interval: HistogramSet
  runs: RunsWire[]
  anomalies: AnomalyOutcome[]
  /** each app's local copy (live alerts + delta sync), compared with the database afterwards */
  appCopies: AppCopyWire[]
  recommendations: RecommendationReceipt[]
  /** earliest and latest sample time generated, for the verification window */
  tMin: number
  tMax: number
  errors: Record<string, number>
  /** the worker's own health: is the load generator the bottleneck? */
  self: WorkerSelf
}

export interface WorkerSelf {
  /** event-loop delay while running, ms */
  loopLagP50Ms: number
  loopLagP99Ms: number
  loopLagMaxMs: number
  cpuUserS: number
  cpuSystemS: number
  rssMb: number
}

export type WorkerToParent =
  | { type: 'ready'; workerIndex: number }
  | StatsMessage
  | FinalMessage
  | { type: 'error'; workerIndex: number; message: string }

export type ParentToWorker = { type: 'init'; init: WorkerInit } | { type: 'start'; atMs: number } | { type: 'stop' }
