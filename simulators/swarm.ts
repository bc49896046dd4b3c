// The swarm: plans users and devices, provisions certificates (cached) and registrations, starts workers (forked
// processes when running compiled JS, in process when running the TypeScript sources under vitest), aggregates their
// stats into a timeline, then verifies every acked reading against the database and writes the report.
import { type ChildProcess, fork } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import cliProgress from 'cli-progress'
import type { Histogram } from 'hdr-histogram-js'
import pg from 'pg'
import { type BrokerConfig, loadConfig } from '../broker.config.js'
import { type Pulsegate, startPulsegate } from '../src/broker.js'
import { withOps } from '../src/cli/ops.js'
import { fingerprint256, initPki, issueCertWithCa, pkiPaths } from '../src/identity/pki.js'
import { Tokens } from '../src/identity/tokens.js'
import { createLogger } from '../src/log.js'
import { computeFeatures, DEFAULT_FEATURE_SETTINGS } from '../src/insights/features.js'
import type { Db, Queryable } from '../src/store/db.js'
import { openPostgres } from '../src/store/postgres.js'
import { type RpcRequest, runRpc } from '../src/transport/http-routes.js'
import { type AppConvergence, compareAppCopies, emptyConvergence } from './app-verify.js'
import { MARATHON_M } from './course.js'
import { ANOMALY_KINDS, type AnomalyKind, anomalyLeadS, hashSeed, Rng, randomProfile } from './physiology.js'
import {
  addCounters,
  forEachLimit,
  type Counters,
  decodeHistogram,
  type FinalMessage,
  type Format,
  type HistogramSet,
  newHistogram,
  type ParentToWorker,
  type RunsWire,
  type Scenario,
  type StatsMessage,
  type Target,
  type UserSpec,
  type WorkerInit,
  type WorkerToParent,
  zeroCounters,
} from './protocol.js'
import {
  type SwarmReport,
  summarize,
  summaryText,
  svgChart,
  type TimelinePoint,
  type Verification,
  type WellnessReport,
  writeReport,
} from './report.js'
import {
  grantRecommendations,
  MIN_HISTORY_DAYS,
  PLANTED_RULES,
  planWellness,
  prepareUsers,
  recommended,
  score,
  scoreFailures,
  type WellnessPlan,
  writeHistory,
} from './wellness-history.js'
import { WorkerDriver } from './worker.js'

export type { SwarmReport } from './report.js'

export type SwarmPhase = 'provisioning' | 'connecting' | 'running' | 'draining' | 'verifying' | 'done'

export interface SwarmOptions {
  devices: number
  durationS: number
  /** connections opened per second across the swarm (default 200) */
  rampPerS?: number
  scenario?: Scenario
  qos?: 0 | 1
  /** samples per batch (default 5) */
  batch?: number
  /** samples per second per device (default 1) */
  rateHz?: number
  format?: Format
  /** worker processes (default: one per core, minus one for an embedded broker) */
  workers?: number
  /** share of users with an app connected over WebSocket (default 0.2; users with an anomaly always get one) */
  appShare?: number
  /** share of users suffering an anomaly mid-run (default 0.01, at least one when > 0) */
  anomalyShare?: number
  /** only these anomaly kinds (default: all of the scenario's, in turn) */
  anomalyKinds?: AnomalyKind[]
  /** anomaly onset, seconds into the run (default: random between 15 % and 40 % of the duration) */
  anomalyAtS?: number
  /** share of users whose phone relays their devices (watch + chest strap) over one bridge connection (default 0.05) */
  bridgeShare?: number
  /** marathon: share of runners who give up during the run (default 0.02) */
  dropOutShare?: number
  /** marathon: share of runners consenting to the public leaderboard (default 0.8) */
  consentShare?: number
  /** QoS 1 batches in flight per connection (default 4) */
  inflight?: number
  /** samples a device keeps while offline or unacked before dropping its oldest batches (default 3600) */
  bufferSamples?: number
  /** after the run, how long devices get to upload what they hold (default 30 s) */
  drainS?: number
  /**
   * With a broker in this process: the drain also waits (within drainS) until every watched anomaly has its alert and
   * the medic its copies. Only for runs whose anomalies can all alert before the end (each rule needs its own time).
   */
  awaitAlerts?: boolean
  /** marathon: the race started at least this long before the run, at the top of an hour (default 1800 s) */
  raceClockS?: number
  seed?: number
  /** cut the links of a share of users at atS for forS seconds (a tunnel): their devices buffer and re-upload */
  offline?: { share: number; atS: number; forS: number } | null
  /** times each app drops its link during the run, reconnects and catches up by delta sync (default 0) */
  appReconnects?: number
  /**
   * Model a device only from its first link on (default false: it samples from power-on and buffers until the link is
   * up). For swarms larger than the generator's cores can model ahead of the connect ramp: 50,000 devices buffering
   * from power-on kept the workers in garbage collection until their handshakes timed out.
   */
  lazyDevices?: boolean
  /**
   * Run the worker processes at this nice value (Linux, `nice` on the PATH; default 0). On a machine the brokers share
   * with the swarm, the generator otherwise takes the brokers' CPU: a starved broker's event loop turns slowly, libuv
   * accepts one connection per listener per loop turn, and the kernel's accept queue fills with connections whose
   * devices have already given up (measured: 6 accepts/s per node, the 50,000-device marathon stuck at 28,000).
   */
  generatorNice?: number
  /**
   * mqtts://host:port of the device listener (default: 127.0.0.1 and the configured port). Several (one per node of a
   * cluster): devices are spread over them round-robin and move on to the next after losing their link.
   */
  url?: string | string[]
  /** ws://host:port/mqtt for apps and medics (default: 127.0.0.1 and the configured HTTP port); several as for url */
  wsUrl?: string | string[]
  /** mqtt://host:port for phone bridges (default: the configured plain port on url's host, with a single url; with
   *  several urls and none of these, bridges use the WebSocket listeners) */
  mqttUrl?: string | string[]
  /** start pulsegate in this process on ephemeral ports (self-contained runs, CI) */
  embeddedBroker?: boolean
  /** drive an already running in-process broker (tests via the harness) */
  broker?: Pulsegate
  /** settings (data dir, database, JWT): default loadConfig(), i.e. PULSEGATE_* */
  config?: BrokerConfig
  report?: string
  svg?: string
  /** progress on stderr: a bar on a TTY, else a line every 5 s when true (default: the bar on a TTY only) */
  progress?: boolean
  /** drive devices in this process even when compiled (default: only when running TypeScript sources) */
  inProcess?: boolean
  /** verify acked readings against the database after the run (default true) */
  verify?: boolean
  /** device/user id prefix (default "sim") */
  idPrefix?: string
  onPhase?: (phase: SwarmPhase, ctx: { instance: Pulsegate | null }) => void
  log?: (line: string) => void
  /** ends the run early, as Ctrl-C does (devices upload what they hold, then the report): a caller waiting for a
   *  condition gives a long duration and aborts once it is met */
  signal?: AbortSignal
  /**
   * wellness: write this many days of history before the live part, with planted conditions, then run the daily
   * rules at the run's start and score them (simulators/wellness-history.ts); 0 = none (default). Every user gets an
   * app subscribed to users/{uid}/recommendations.
   */
  historyDays?: number
  /** share of users given a planted condition, split evenly over rhr_elevated, load_jump and step_goal (default 0.3) */
  plantedShare?: number
  /** the score a planted rule needs (default 1 and 1: the planted conditions are unambiguous) */
  minPrecision?: number
  minRecall?: number
}

const EVENT_ID = 'sim-marathon'
const PROVISION_CONCURRENCY = 8
/** users per bulk registration: with their devices (≤ 2 each) well inside the RPC's bulk limit and body size */
const REGISTER_CHUNK = 1000
/** Ephemeral ports per (source address, destination); beyond that, more 127.0.0.x source addresses. */
const CONNS_PER_SOURCE = 25_000
/**
 * Sockets bound to one source address when sources are in use. bind() to an address with port 0 searches the whole
 * ephemeral range for a port no socket on that address holds (connect() without bind only needs a free 4-tuple):
 * near the range's 28,000 ports every bind is a long kernel search (perf: inet_bind2_bucket_find), and the swarm
 * stalled at ~4,500 connections of 50,000. So bind only when one destination needs it, and keep each address sparse.
 */
const BOUND_PER_SOURCE = 10_000

const pad = (n: number) => String(n).padStart(6, '0')

interface Plan {
  users: UserSpec[]
  birthYears: Map<string, number>
  consent: Set<string>
  anomalies: Partial<Record<AnomalyKind, number>>
  /** kinds the run is too short for: kind → seconds after onset its rule needs */
  anomaliesLeftOut: Partial<Record<AnomalyKind, number>>
  devices: number
}

function plan(o: Resolved, certDir: string): Plan {
  const rng = new Rng(hashSeed(o.seed, 'plan'))
  const users: UserSpec[] = []
  const birthYears = new Map<string, number>()
  const consent = new Set<string>()
  const year = new Date().getUTCFullYear()
  let devices = 0
  for (let i = 0; devices < o.devices; i++) {
    const userId = `${o.idPrefix}-u${pad(i + 1)}`
    const bridge = o.devices - devices >= 2 && rng.chance(o.bridgeShare)
    const kinds: ('watch' | 'strap')[] = bridge ? ['watch', 'strap'] : ['watch']
    const seed = hashSeed(o.seed, userId)
    const deviceSpecs = kinds.map((kind) => {
      const deviceId = `${userId}-${kind === 'watch' ? 'w' : 's'}`
      return {
        deviceId,
        kind,
        certPath: path.join(certDir, `${deviceId}.crt`),
        keyPath: path.join(certDir, `${deviceId}.key`),
      }
    })
    devices += deviceSpecs.length
    birthYears.set(userId, year - randomProfile(new Rng(seed)).age)
    if (o.scenario === 'marathon' && rng.chance(o.consentShare)) consent.add(userId)
    users.push({
      userId,
      index: i,
      seed,
      via: bridge ? 'bridge' : 'direct',
      devices: deviceSpecs,
      // With a history every user has an app: recommendations are scored on everyone, planted or not.
      app: rng.chance(o.appShare) || o.historyDays > 0 ? { token: '', leaderboard: rng.chance(0.1) } : null,
      bridgeToken: null,
      anomaly: null,
      startS: i / o.rampPerS,
      offline: o.offline ? rng.chance(o.offline.share) : false,
      dropOut: o.scenario === 'marathon' && rng.chance(o.dropOutShare),
    })
  }
  const { anomalies, leftOut } = placeAnomalies(users, o, rng)
  return { users, birthYears, consent, anomalies, anomaliesLeftOut: leftOut, devices }
}

/**
 * Anomalies: the kinds in turn, evenly over the users, onset between 15 % and 40 % of the run after the user's
 * devices are on — but only where the run leaves the broker's rule its time (anomalyLeadS) before sampling stops: an
 * anomaly injected 20 s before the end of the run can never alert, and counting it as missed measured the run's
 * length, not the broker. Kinds no user fits are left out and reported (leftOut: kind → seconds its rule needs).
 */
export function placeAnomalies(
  users: UserSpec[],
  o: Pick<Resolved, 'anomalyShare' | 'anomalyKinds' | 'anomalyAtS' | 'durationS' | 'scenario'>,
  rng: Rng,
): { anomalies: Partial<Record<AnomalyKind, number>>; leftOut: Partial<Record<AnomalyKind, number>> } {
  const anomalies: Partial<Record<AnomalyKind, number>> = {}
  const leftOut: Partial<Record<AnomalyKind, number>> = {}
  if (o.anomalyShare > 0) {
    const n = Math.max(1, Math.round(users.length * o.anomalyShare))
    const stride = users.length / n
    const kinds = o.anomalyKinds && o.anomalyKinds.length > 0 ? o.anomalyKinds : ANOMALY_KINDS[o.scenario]
    const latestOnset = (leadS: number) => o.durationS - leadS
    /** an untaken user at or near `from` whose devices are on by `onsetBy`, accepted by `ok`; users start in order */
    const pick = (from: number, onsetBy: number, ok: (u: UserSpec) => boolean): UserSpec | undefined => {
      let last = users.length - 1
      while (last >= 0 && (users[last] as UserSpec).startS + 1 > onsetBy) last--
      for (let d = 0; d <= last; d++) {
        for (const i of [Math.min(from, last) - d, Math.min(from, last) + d]) {
          const u = users[i]
          if (i >= 0 && i <= last && u && u.anomaly === null && ok(u)) return u
        }
      }
      return undefined
    }
    for (let k = 0; k < n; k++) {
      const from = Math.floor(k * stride + rng.range(0, stride))
      const variantBrady = rng.chance(0.5)
      let placed = false
      for (let j = 0; j < kinds.length && !placed; j++) {
        const kind = kinds[(k + j) % kinds.length] as AnomalyKind
        let shortestLeadS = Number.POSITIVE_INFINITY
        // cardiac: the drawn variant, or the other one when only it fits the run
        for (const brady of kind === 'cardiac' ? [variantBrady, !variantBrady] : [false]) {
          const leadS = anomalyLeadS(kind, o.scenario, brady)
          shortestLeadS = Math.min(shortestLeadS, leadS)
          const onsetBy = Math.min(latestOnset(leadS), o.anomalyAtS ?? Number.POSITIVE_INFINITY)
          if (o.anomalyAtS !== undefined && o.anomalyAtS > latestOnset(leadS)) continue
          // A chest strap still reports HR when the watch's sensor fails: sensor loss only on direct trackers.
          const u = pick(from, onsetBy, (c) => kind !== 'sensor_loss' || c.via === 'direct')
          if (!u) continue
          const preferred = o.anomalyAtS ?? o.durationS * rng.range(0.15, 0.4)
          const atS = Math.max(u.startS + 1, Math.min(preferred, latestOnset(leadS)))
          u.anomaly = kind === 'cardiac' ? { kind, atS, brady } : { kind, atS }
          u.dropOut = false
          u.app ??= { token: '', leaderboard: false }
          anomalies[kind] = (anomalies[kind] ?? 0) + 1
          placed = true
          break
        }
        // a kind placed elsewhere is not left out (cleared below)
        if (!placed) leftOut[kind] = shortestLeadS
      }
    }
    for (const kind of Object.keys(anomalies)) delete leftOut[kind as AnomalyKind]
  }
  return { anomalies, leftOut }
}

type OptionalKeys =
  | 'offline'
  | 'anomalyKinds'
  | 'anomalyAtS'
  | 'url'
  | 'wsUrl'
  | 'mqttUrl'
  | 'broker'
  | 'config'
  | 'report'
  | 'svg'
  | 'onPhase'
  | 'log'
  | 'signal'
  | 'workers'
  | 'progress'

type Resolved = ReturnType<typeof withDefaults>

function withDefaults(o: SwarmOptions) {
  if (!(Number.isInteger(o.devices) && o.devices > 0)) throw new Error('devices must be a positive whole number')
  if (!(o.durationS > 0)) throw new Error('duration must be positive')
  if (o.historyDays && (o.scenario ?? 'marathon') !== 'wellness')
    throw new Error('--history-days is for --scenario wellness')
  if (o.historyDays && !(Number.isInteger(o.historyDays) && o.historyDays >= MIN_HISTORY_DAYS))
    throw new Error(`--history-days must be a whole number ≥ ${MIN_HISTORY_DAYS} (baseline nights, worn days)`)
  return {
    ...o,
    rampPerS: o.rampPerS ?? 200,
    scenario: o.scenario ?? 'marathon',
    qos: o.qos ?? 1,
    batch: o.batch ?? 5,
    rateHz: o.rateHz ?? 1,
    format: o.format ?? 'cbor',
    appShare: o.appShare ?? 0.2,
    anomalyShare: o.anomalyShare ?? 0.01,
    bridgeShare: o.bridgeShare ?? 0.05,
    dropOutShare: o.dropOutShare ?? 0.02,
    consentShare: o.consentShare ?? 0.8,
    inflight: o.inflight ?? 4,
    bufferSamples: o.bufferSamples ?? 3600,
    drainS: o.drainS ?? 30,
    awaitAlerts: o.awaitAlerts ?? false,
    raceClockS: o.raceClockS ?? 1800,
    seed: o.seed ?? 1,
    appReconnects: o.appReconnects ?? 0,
    lazyDevices: o.lazyDevices ?? false,
    generatorNice: o.generatorNice ?? 0,
    embeddedBroker: o.embeddedBroker ?? false,
    inProcess: o.inProcess ?? false,
    verify: o.verify ?? true,
    idPrefix: o.idPrefix ?? 'sim',
    historyDays: o.historyDays ?? 0,
    plantedShare: o.plantedShare ?? 0.3,
    minPrecision: o.minPrecision ?? 1,
    minRecall: o.minRecall ?? 1,
  } satisfies Required<Omit<SwarmOptions, OptionalKeys>> & SwarmOptions
}

/** Device certificates under <dataDir>/sim/certs, reused across runs while the CA stays the same. */
async function provisionCerts(
  pkiDir: string,
  certDir: string,
  devices: { deviceId: string; certPath: string; keyPath: string }[],
  onProgress: (done: number) => void,
): Promise<{ issued: number; cached: number; fingerprints: Map<string, string> }> {
  const p = pkiPaths(pkiDir)
  const caCert = fs.readFileSync(p.caCert, 'utf8')
  const caKey = fs.readFileSync(p.caKey, 'utf8')
  const caFp = fingerprint256(caCert)
  const stamp = path.join(certDir, 'ca.fingerprint')
  fs.mkdirSync(certDir, { recursive: true, mode: 0o700 })
  if (!fs.existsSync(stamp) || fs.readFileSync(stamp, 'utf8').trim() !== caFp) {
    for (const f of fs.readdirSync(certDir)) fs.rmSync(path.join(certDir, f), { force: true })
    fs.writeFileSync(stamp, caFp)
  }
  const fingerprints = new Map<string, string>()
  let issued = 0
  let cached = 0
  let done = 0
  await forEachLimit(devices, PROVISION_CONCURRENCY, async (d) => {
    if (fs.existsSync(d.certPath) && fs.existsSync(d.keyPath)) {
      fingerprints.set(d.deviceId, fingerprint256(fs.readFileSync(d.certPath, 'utf8')))
      cached++
    } else {
      const c = await issueCertWithCa(caCert, caKey, d.deviceId)
      fs.writeFileSync(d.keyPath, c.keyPem, { mode: 0o600 })
      fs.writeFileSync(d.certPath, c.certPem)
      fingerprints.set(d.deviceId, c.fingerprint256)
      issued++
    }
    onProgress(++done)
  })
  return { issued, cached, fingerprints }
}

interface VerifyDb {
  via: 'instance' | 'postgres'
  transaction<T>(fn: (q: Queryable) => Promise<T>): Promise<T>
  close(): Promise<void>
}

function pgVerifyDb(url: string): VerifyDb {
  const client = new pg.Client({ connectionString: url })
  const connected = client.connect()
  const q: Queryable = {
    async query<R>(sql: string, params?: unknown[]) {
      const r = await client.query(sql, params)
      return { rows: r.rows as R[], rowCount: r.rowCount ?? 0 }
    },
  }
  return {
    via: 'postgres',
    async transaction(fn) {
      await connected
      await client.query('BEGIN')
      try {
        const out = await fn(q)
        await client.query('COMMIT')
        return out
      } catch (err) {
        await client.query('ROLLBACK').catch(() => undefined)
        throw err
      }
    },
    close: () => client.end(),
  }
}

const RUN_CHUNK = 20_000

/**
 * Every acked reading (device, metric, t) must be in the database exactly once. The acked set travels as arithmetic
 * runs and is expanded in SQL; rejected readings are taken out; then expected rows are matched against samples
 * (metric 1–6) and positions (metric 0) with the same to_timestamp(t / 1000.0) the writer uses.
 */
async function verify(
  db: VerifyDb,
  runs: RunsWire[],
  deviceIds: string[],
  tMin: number,
  tMax: number,
): Promise<Verification> {
  const started = Date.now()
  const r = await db.transaction(async (q) => {
    await q.query(
      `CREATE TEMP TABLE sim_runs (device_id text, metric smallint, rejected boolean, t0 float8, step float8, n int4)
       ON COMMIT DROP`,
    )
    for (let i = 0; i < runs.length; i += RUN_CHUNK) {
      const cols: [string[], number[], boolean[], number[], number[], number[]] = [[], [], [], [], [], []]
      for (const run of runs.slice(i, i + RUN_CHUNK)) {
        for (let k = 0; k < run.n.length; k++) {
          cols[0].push(run.deviceId)
          cols[1].push(run.metric)
          cols[2].push(run.rejected)
          cols[3].push(run.t0[k] as number)
          cols[4].push(run.step[k] as number)
          cols[5].push(run.n[k] as number)
        }
      }
      await q.query(
        `INSERT INTO sim_runs SELECT * FROM unnest($1::text[], $2::int2[], $3::bool[], $4::float8[], $5::float8[], $6::int4[])`,
        cols,
      )
    }
    await q.query(
      `CREATE TEMP TABLE sim_expected ON COMMIT DROP AS
         SELECT d.device_key, r.metric, r.t0 + r.step * g AS t
           FROM sim_runs r JOIN devices d USING (device_id) CROSS JOIN LATERAL generate_series(0, r.n - 1) g
          WHERE NOT r.rejected
         EXCEPT
         SELECT d.device_key, r.metric, r.t0 + r.step * g
           FROM sim_runs r JOIN devices d USING (device_id) CROSS JOIN LATERAL generate_series(0, r.n - 1) g
          WHERE r.rejected`,
    )
    const unknown = await q.query<{ n: number }>(
      'SELECT count(DISTINCT device_id)::int AS n FROM sim_runs r WHERE NOT EXISTS (SELECT 1 FROM devices d WHERE d.device_id = r.device_id)',
    )
    const m = await q.query<{ expected: number; found: number; matched: number }>(
      `SELECT
         (SELECT count(*) FROM sim_expected)::int AS expected,
         ((SELECT count(DISTINCT (e.device_key, e.metric, e.t)) FROM sim_expected e JOIN samples s
             ON s.device_key = e.device_key AND s.metric = e.metric AND s.time = to_timestamp(e.t / 1000.0) WHERE e.metric > 0)
          + (SELECT count(DISTINCT (e.device_key, e.t)) FROM sim_expected e JOIN positions p
             ON p.device_key = e.device_key AND p.time = to_timestamp(e.t / 1000.0) WHERE e.metric = 0))::int AS found,
         ((SELECT count(*) FROM sim_expected e JOIN samples s
             ON s.device_key = e.device_key AND s.metric = e.metric AND s.time = to_timestamp(e.t / 1000.0) WHERE e.metric > 0)
          + (SELECT count(*) FROM sim_expected e JOIN positions p
             ON p.device_key = e.device_key AND p.time = to_timestamp(e.t / 1000.0) WHERE e.metric = 0))::int AS matched`,
    )
    const w = await q.query<{ rows: number; distinct_rows: number }>(
      `WITH k AS (SELECT device_key FROM devices WHERE device_id = ANY($1::text[]))
       SELECT
         ((SELECT count(*) FROM samples WHERE device_key IN (SELECT device_key FROM k) AND metric BETWEEN 1 AND 6
             AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0))
          + (SELECT count(*) FROM positions WHERE device_key IN (SELECT device_key FROM k)
             AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0)))::int AS rows,
         ((SELECT count(DISTINCT (device_key, metric, time)) FROM samples WHERE device_key IN (SELECT device_key FROM k)
             AND metric BETWEEN 1 AND 6 AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0))
          + (SELECT count(DISTINCT (device_key, time)) FROM positions WHERE device_key IN (SELECT device_key FROM k)
             AND time BETWEEN to_timestamp($2 / 1000.0) AND to_timestamp($3 / 1000.0)))::int AS distinct_rows`,
      [deviceIds, tMin, tMax],
    )
    return { unknown: unknown.rows[0]?.n ?? 0, m: m.rows[0], w: w.rows[0] }
  })
  const expected = Number(r.m?.expected ?? 0)
  const found = Number(r.m?.found ?? 0)
  const matched = Number(r.m?.matched ?? 0)
  const rows = Number(r.w?.rows ?? 0)
  const distinct = Number(r.w?.distinct_rows ?? 0)
  const lost = expected - found
  const duplicates = matched - found + (rows - distinct)
  const ok = lost === 0 && duplicates === 0 && r.unknown === 0
  return {
    status: ok ? 'ok' : 'failed',
    reason: r.unknown > 0 ? `${r.unknown} devices not registered` : null,
    via: db.via,
    expected,
    found,
    lost,
    duplicates,
    storedRows: rows,
    storedUnconfirmed: Math.max(0, rows - found),
    unknownDevices: r.unknown,
    queryMs: Date.now() - started,
  }
}

/** The broker's own ingest counters, when it runs in this process. */
async function brokerCounters(instance: Pulsegate): Promise<Record<string, number>> {
  const names: Record<string, string> = {
    batchesReceived: 'pulsegate_ingest_batches_total',
    samplesReceived: 'pulsegate_ingest_samples_received_total',
    samplesAccepted: 'pulsegate_ingest_samples_accepted_total',
    samplesRejected: 'pulsegate_ingest_samples_rejected_total',
    duplicates: 'pulsegate_ingest_duplicates_total',
    rowsCommitted: 'pulsegate_ingest_rows_committed_total',
    refused: 'pulsegate_ingest_refused_total',
    dropped: 'pulsegate_ingest_dropped_total',
    authRefusals: 'pulsegate_auth_refusals_total',
    aclRefusals: 'pulsegate_acl_refusals_total',
    alertsOpened: 'pulsegate_alerts_opened_total',
  }
  const out: Record<string, number> = {}
  for (const [key, name] of Object.entries(names)) {
    const metric = instance.metrics.registry.getSingleMetric(name)
    if (!metric) continue
    const v = await metric.get()
    out[key] = v.values.reduce((s, x) => s + x.value, 0)
  }
  return out
}

/** The compiled worker next to this file; null when running TypeScript sources (then devices run in process). */
function workerScript(): string | null {
  const here = fileURLToPath(import.meta.url)
  if (here.endsWith('.ts')) return null
  const script = path.join(path.dirname(here), 'worker.js')
  return fs.existsSync(script) ? script : null
}

interface WorkerHandle {
  send(m: ParentToWorker): void
  kill(): void
  exited: Promise<void>
}

function spawnWorker(script: string | null, onMessage: (m: WorkerToParent) => void, nice = 0): WorkerHandle {
  if (!script) {
    let driver: WorkerDriver | null = null
    let resolveExit: () => void = () => undefined
    const exited = new Promise<void>((r) => {
      resolveExit = r
    })
    // Deliver asynchronously, as IPC would, so the parent's handlers never run inside the driver's call stack.
    const deliver = (m: WorkerToParent) =>
      setImmediate(() => {
        onMessage(m)
        if (m.type === 'final' || m.type === 'error') resolveExit()
      })
    return {
      send(m) {
        if (m.type === 'init') {
          driver = new WorkerDriver(m.init, deliver)
          driver
            .prepare()
            .catch((err: Error) => deliver({ type: 'error', workerIndex: m.init.workerIndex, message: err.message }))
        } else if (m.type === 'start') driver?.start(m.atMs)
        else driver?.requestStop()
      },
      kill: () => driver?.requestStop(),
      exited,
    }
  }
  // `nice -n N node …` keeps fork's IPC channel (its descriptor and NODE_CHANNEL_FD pass through nice), and every
  // thread of the worker (V8's GC helpers too) starts at that priority, which setpriority() on a running pid would miss.
  const niced = nice > 0 && process.platform === 'linux'
  const child: ChildProcess = fork(script, [], {
    ...(niced ? { execPath: 'nice', execArgv: ['-n', String(nice), process.execPath, ...process.execArgv] } : {}),
    serialization: 'advanced',
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  child.on('message', (m: WorkerToParent) => onMessage(m))
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  return {
    send: (m) => {
      if (child.connected) child.send(m)
    },
    kill: () => child.kill('SIGTERM'),
    exited,
  }
}

export async function runSwarm(options: SwarmOptions): Promise<SwarmReport> {
  const o = withDefaults(options)
  const log = o.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  const startedAt = new Date()
  const config =
    o.broker?.config ??
    o.config ??
    loadConfig(
      o.embeddedBroker ? { host: '127.0.0.1', mqttPort: 0, mqttsPort: 0, httpPort: 0, shutdownSignals: false } : {},
    )
  const phase = (p: SwarmPhase, instance: Pulsegate | null) => o.onPhase?.(p, { instance })

  // The broker: ours (embedded), the caller's (in process), or one running elsewhere (external).
  let instance: Pulsegate | null = o.broker ?? null
  let ownBroker = false
  // The dev PKI first: the broker would otherwise create it with a warning meant for operators.
  await initPki(path.join(config.dataDir, 'pki'))
  if (!instance && o.embeddedBroker) {
    const cfg = loadConfig(
      {
        ...config,
        host: '127.0.0.1',
        mqttPort: 0,
        mqttsPort: 0,
        httpPort: 0,
        shutdownSignals: false,
        // The history has one HR sample a minute; the daily rules run when the simulator says (not the scheduler).
        ...(o.historyDays > 0 ? { insights: { ...config.insights, minSamplesPerMinute: 1, tickMs: 86_400_000 } } : {}),
      },
      {},
    )
    // A caller's config says how loud; from the command line the broker keeps to warnings unless told otherwise.
    const level = o.config ? o.config.logLevel : (process.env.PULSEGATE_LOG_LEVEL ?? 'warn')
    instance = await startPulsegate(cfg, { log: createLogger(level) })
    ownBroker = true
  }
  try {
    return await runAgainst(o, config, instance, ownBroker, log, phase, startedAt)
  } finally {
    if (ownBroker && instance) await instance.stop()
  }
}

/** A comma-separated list or an array of URLs, as an array (empty when unset). */
export function urlList(v: string | string[] | undefined): string[] {
  const items = Array.isArray(v) ? v : v === undefined ? [] : v.split(',')
  return items.map((u) => u.trim()).filter((u) => u.length > 0)
}

/** A broker (or several, or a load balancer) in other processes: the listeners from the options or the config. */
function externalTarget(o: Resolved, config: BrokerConfig, caPath: string): Target {
  const host = '127.0.0.1'
  const mqtts = urlList(o.url)
  const ws = urlList(o.wsUrl)
  const mqtt = urlList(o.mqttUrl)
  if (mqtts.length === 0) mqtts.push(`mqtts://${host}:${config.mqttsPort}`)
  if (ws.length === 0) {
    // The configured HTTP port on each device listener's host, unless told otherwise.
    const scheme = config.tls.wss ? 'wss' : 'ws'
    ws.push(...new Set(mqtts.map((u) => `${scheme}://${new URL(u).hostname}:${config.httpPort}/mqtt`)))
  }
  if (mqtt.length === 0 && mqtts.length === 1 && config.mqttEnabled)
    mqtt.push(`mqtt://${new URL(mqtts[0] as string).hostname}:${config.mqttPort}`)
  return { mqtts, ws, mqtt: mqtt.length > 0 ? mqtt : null, caPath }
}

async function runAgainst(
  o: Resolved,
  config: BrokerConfig,
  instance: Pulsegate | null,
  ownBroker: boolean,
  log: (line: string) => void,
  phase: (p: SwarmPhase, instance: Pulsegate | null) => void,
  startedAt: Date,
): Promise<SwarmReport> {
  const pkiDir = path.join(config.dataDir, 'pki')
  const caPath = config.tls.caFile ?? pkiPaths(pkiDir).caCert
  if (
    config.tls.caFile &&
    fs.readFileSync(config.tls.caFile, 'utf8') !== fs.readFileSync(pkiPaths(pkiDir).caCert, 'utf8')
  ) {
    throw new Error(
      `the device CA (${config.tls.caFile}) is not the dev PKI in ${pkiDir}: the simulator can only issue device certificates with the dev CA`,
    )
  }
  const host = '127.0.0.1'
  const target: Target = instance
    ? {
        mqtts: [`mqtts://${host}:${instance.ports.mqtts ?? 0}`],
        ws: [`${config.tls.wss ? 'wss' : 'ws'}://${host}:${instance.ports.http}/mqtt`],
        mqtt: instance.ports.mqtt !== null ? [`mqtt://${host}:${instance.ports.mqtt}`] : null,
        caPath,
      }
    : externalTarget(o, config, caPath)
  if (instance && instance.ports.mqtts === null) throw new Error('the broker has no MQTT/TLS listener for devices')

  // Plan and provision.
  phase('provisioning', instance)
  const certDir = path.join(config.dataDir, 'sim', 'certs')
  const p = plan(o, certDir)
  const allDevices = p.users.flatMap((u) => u.devices)
  // A live bar on a terminal; elsewhere (CI logs, files) a line every 5 s.
  const showProgress = o.progress !== false && process.stderr.isTTY === true
  const logProgress = o.progress === true && !showProgress
  const certStart = Date.now()
  let bar: cliProgress.SingleBar | null = null
  if (showProgress) {
    bar = new cliProgress.SingleBar(
      { format: 'certificates {bar} {value}/{total}', stream: process.stderr, hideCursor: true, clearOnComplete: true },
      cliProgress.Presets.shades_classic,
    )
    bar.start(allDevices.length, 0)
  }
  const certs = await provisionCerts(pkiDir, certDir, allDevices, (n) => bar?.update(n))
  bar?.stop()
  const certMs = Date.now() - certStart

  const registerStart = Date.now()
  // The gun went off at the top of an hour, at least raceClockS ago: runs within that hour continue one race, so
  // a device's first fix of a run is never implausibly far from its last fix of the previous run.
  const raceStartMs = Math.floor((Date.now() - o.raceClockS * 1000) / 3_600_000) * 3_600_000
  const register = async (op: (req: RpcRequest) => Promise<unknown>) => {
    if (o.scenario === 'marathon') {
      await op({
        op: 'createEvent',
        eventId: EVENT_ID,
        name: 'pulsegate simulated marathon',
        distanceM: MARATHON_M,
        startsAt: new Date(raceStartMs).toISOString(),
      })
    }
    // Bulk operations, a chunk of users at a time: one round trip and transaction per chunk instead of ~8 per user,
    // and idempotent, so provisioning the same swarm again rewrites nothing and appends no consent history.
    for (let i = 0; i < p.users.length; i += REGISTER_CHUNK) {
      const chunk = p.users.slice(i, i + REGISTER_CHUNK)
      await op({
        op: 'registerDevices',
        users: chunk.map((u) => {
          const birthYear = p.birthYears.get(u.userId)
          return { userId: u.userId, ...(birthYear ? { birthYear } : {}) }
        }),
        devices: chunk.flatMap((u) =>
          u.devices.map((d) => ({
            deviceId: d.deviceId,
            userId: u.userId,
            fingerprint: certs.fingerprints.get(d.deviceId) ?? '',
          })),
        ),
      })
      if (o.scenario === 'marathon') {
        await op({
          op: 'joinEvents',
          eventId: EVENT_ID,
          participants: chunk.map((u) => ({ userId: u.userId, consentLeaderboard: p.consent.has(u.userId) })),
        })
      }
    }
  }
  if (instance) {
    const registry = instance.registry
    await register((req) => runRpc(registry, req))
  } else await withOps(config, register)
  const registerMs = Date.now() - registerStart

  // Wellness history: written before anyone connects, on a clock ending now.
  const userIds = p.users.map((u) => u.userId)
  let history: WellnessHistory | null = null
  if (o.historyDays > 0) {
    const db = await historyDb(instance, config)
    const wplan = planWellness(userIds, { share: o.plantedShare, seed: o.seed, days: o.historyDays, nowMs: Date.now() })
    if (instance && instance.config.insights.minSamplesPerMinute !== 1)
      log('warning: the history has 1 HR sample a minute; the broker needs insights.minSamplesPerMinute = 1')
    try {
      await prepareUsers(db.db, wplan, userIds)
      const w = await writeHistory(
        db.db,
        wplan,
        p.users.map((u) => ({ userId: u.userId, deviceId: u.devices[0]?.deviceId ?? '' })),
      )
      // The nightly features of the past days, as the scheduler would have computed them day by day: the run below
      // then recomputes only its lookback days, so its time is the rules' and the delivery's.
      const f0 = performance.now()
      await computeFeatures(db.db, db.timescale, userIds, new Date(wplan.nowMs), {
        ...DEFAULT_FEATURE_SETTINGS,
        minSamplesPerMinute: 1,
        historyDays: Math.max(o.historyDays, config.insights.historyDays),
      })
      history = { db, plan: wplan, ...w, featuresMs: Math.round(performance.now() - f0) }
    } catch (err) {
      await db.close()
      throw err
    }
    log(
      `wellness history: ${o.historyDays} days, ${history.rows} rows in ${(history.ms / 1000).toFixed(1)} s, ` +
        `features ${(history.featuresMs / 1000).toFixed(1)} s`,
    )
  }

  // Tokens for apps, bridges and the medic.
  const tokens = instance?.tokens ?? new Tokens(config)
  const ttl = Math.ceil(o.durationS + o.drainS + 3600)
  const eventId = o.scenario === 'marathon' ? EVENT_ID : null
  for (const u of p.users) {
    if (u.app) u.app.token = await tokens.sign({ sub: u.userId, role: 'app', ttl })
    if (u.via === 'bridge') u.bridgeToken = await tokens.sign({ sub: u.userId, role: 'bridge', ttl })
  }
  const medic = eventId
    ? {
        userId: `${o.idPrefix}-medic`,
        token: await tokens.sign({ sub: `${o.idPrefix}-medic`, role: 'medic', ttl, events: [eventId] }),
      }
    : null

  // Workers.
  const script = o.inProcess ? null : workerScript()
  const inProcess = script === null
  const cores = os.availableParallelism()
  const nWorkers = inProcess ? 1 : Math.max(1, Math.min(o.workers ?? cores - (instance ? 1 : 0), p.users.length))
  const connections = p.users.length + p.users.filter((u) => u.app).length
  const loopback = target.mqtts.every((u) => /^127\./.test(new URL(u).hostname))
  // Devices and apps are spread over the listed nodes; connect() shares local ports across destinations.
  const destinations = Math.max(1, Math.min(new Set(target.mqtts).size, new Set(target.ws).size))
  const sources =
    loopback && connections / destinations > CONNS_PER_SOURCE ? Math.ceil(connections / BOUND_PER_SOURCE) : 0
  const sourceAddresses = Array.from({ length: sources }, (_, i) => `127.0.0.${i + 1}`)
  const slices: UserSpec[][] = Array.from({ length: nWorkers }, () => [])
  p.users.forEach((u, i) => {
    slices[i % nWorkers]?.push(u)
  })

  const latest: (StatsMessage | FinalMessage | null)[] = Array.from({ length: nWorkers }, () => null)
  const finals: (FinalMessage | null)[] = Array.from({ length: nWorkers }, () => null)
  const totals: Record<keyof HistogramSet, Histogram> = {
    ackUs: newHistogram(),
    alertMs: newHistogram(),
    liveLagMs: newHistogram(),
  }
  const intervalAck = newHistogram()
  /** each tick's acks, kept to sum the steady window (after the ramp) once it is known */
  const tickAcks: { tS: number; h: Histogram }[] = []
  let readyCount = 0
  let failure: Error | null = null
  let onReady: () => void = () => undefined
  let onFinal: () => void = () => undefined
  const allReady = new Promise<void>((r) => {
    onReady = r
  })
  const allFinal = new Promise<void>((r) => {
    onFinal = r
  })
  const absorb = (set: HistogramSet) => {
    const ack = decodeHistogram(set.ackUs)
    totals.ackUs.add(ack)
    intervalAck.add(ack)
    totals.alertMs.add(decodeHistogram(set.alertMs))
    totals.liveLagMs.add(decodeHistogram(set.liveLagMs))
  }
  const handles = slices.map(() =>
    spawnWorker(
      script,
      (m) => {
        if (m.type === 'ready') {
          if (++readyCount === nWorkers) onReady()
        } else if (m.type === 'stats') {
          latest[m.workerIndex] = m
          absorb(m.interval)
        } else if (m.type === 'final') {
          latest[m.workerIndex] = m
          finals[m.workerIndex] = m
          absorb(m.interval)
          if (finals.every((f) => f !== null)) onFinal()
        } else {
          failure = new Error(`worker ${m.workerIndex}: ${m.message}`)
          onReady()
          onFinal()
        }
      },
      o.generatorNice,
    ),
  )
  handles.forEach((h, i) => {
    // A worker that dies without its final must not hang the run (a final may still be in the IPC pipe at 'exit').
    void h.exited.then(() =>
      setTimeout(() => {
        if (finals[i] !== null) return
        failure ??= new Error(`worker ${i} exited before reporting its results`)
        onReady()
        onFinal()
      }, 2000),
    )
  })
  const workerOptions = {
    scenario: o.scenario,
    qos: o.qos,
    batchEvery: o.batch,
    intervalMs: Math.max(1, Math.round(1000 / o.rateHz)),
    format: o.format,
    inflight: o.inflight,
    bufferSamples: o.bufferSamples,
    durationS: o.durationS,
    drainS: o.drainS,
    awaitAlerts: o.awaitAlerts && instance !== null,
    eventId,
    raceStartMs,
    seed: o.seed,
    offline: o.offline ? { atS: o.offline.atS, forS: o.offline.forS } : null,
    statsIntervalMs: 1000,
    appReconnects: o.appReconnects,
    sourceAddresses,
    sampleBeforeLink: !o.lazyDevices,
    recommendations: history !== null,
  }
  phase('connecting', instance)
  handles.forEach((h, workerIndex) => {
    const init: WorkerInit = {
      workerIndex,
      target,
      options: workerOptions,
      users: slices[workerIndex] ?? [],
      medic: workerIndex === 0 ? medic : null,
    }
    h.send({ type: 'init', init })
  })

  let stopRequested = false
  const onSigint = () => {
    if (stopRequested) process.exit(130)
    stopRequested = true
    log('stopping: devices upload what they hold, then the report (Ctrl-C again to abort)')
    for (const h of handles) h.send({ type: 'stop' })
  }
  if (!inProcess) process.on('SIGINT', onSigint)
  const onAbort = () => {
    if (stopRequested) return
    stopRequested = true
    for (const h of handles) h.send({ type: 'stop' })
  }
  if (o.signal?.aborted) onAbort()
  else o.signal?.addEventListener('abort', onAbort, { once: true })

  const timeline: TimelinePoint[] = []
  let t0 = 0
  let timer: NodeJS.Timeout | null = null
  let runBar: cliProgress.SingleBar | null = null
  let daily: DailyRun | null = null
  try {
    await allReady
    if (failure) throw failure
    // The apps are subscribed: the daily rules now, at the end of the history (as `insights run --at` would).
    if (history) daily = await runDaily(history.db, instance, config, userIds)
    t0 = Date.now() + 200
    for (const h of handles) h.send({ type: 'start', atMs: t0 })
    phase('running', instance)

    const sum = (): Counters => {
      const c = zeroCounters()
      for (const m of latest) if (m) addCounters(c, m.counters)
      return c
    }
    let prev = zeroCounters()
    let prevAt = t0
    if (showProgress) {
      runBar = new cliProgress.SingleBar(
        {
          format:
            '{bar} {elapsed}/{durationS} s | conn {conn}/{total} | {mps} msg/s | {rps} readings/s | ack p99 {p99} ms | buffered {buf} | dropped {drop}',
          stream: process.stderr,
          hideCursor: true,
          barsize: 20,
        },
        cliProgress.Presets.shades_classic,
      )
      runBar.start(o.durationS, 0, {
        elapsed: 0,
        durationS: o.durationS,
        conn: 0,
        total: p.users.length,
        mps: 0,
        rps: 0,
        p99: 0,
        buf: 0,
        drop: 0,
      })
    }
    let lastLog = 0
    let drainingSignalled = false
    timer = setInterval(() => {
      const c = sum()
      const now = Date.now()
      const tS = Math.round((now - t0) / 100) / 10
      // Per actual second: a busy event loop (an embedded broker) stretches the ticks.
      const secs = Math.max(0.001, (now - prevAt) / 1000)
      prevAt = now
      const rate = (k: 'publishes' | 'batchesAcked' | 'readingsAcked') => Math.round((c[k] - prev[k]) / secs)
      const point: TimelinePoint = {
        tS,
        connected: c.connected,
        publishesPerS: rate('publishes'),
        ackedPerS: rate('batchesAcked'),
        readingsPerS: rate('readingsAcked'),
        ackP50Ms: intervalAck.totalCount ? intervalAck.getValueAtPercentile(50) / 1000 : 0,
        ackP99Ms: intervalAck.totalCount ? intervalAck.getValueAtPercentile(99) / 1000 : 0,
        buffered: c.samplesBuffered,
        dropped: c.samplesDropped,
        ackedTotal: c.batchesAcked,
        readingsTotal: c.readingsAcked,
      }
      const kept = newHistogram()
      kept.add(intervalAck)
      tickAcks.push({ tS, h: kept })
      intervalAck.reset()
      prev = c
      timeline.push(point)
      if (!drainingSignalled && tS >= o.durationS) {
        drainingSignalled = true
        phase('draining', instance)
      }
      const payload = {
        elapsed: Math.min(Math.round(tS), o.durationS),
        durationS: o.durationS,
        conn: c.connected,
        total: p.users.length,
        mps: point.publishesPerS,
        rps: point.readingsPerS,
        p99: point.ackP99Ms.toFixed(1),
        buf: c.samplesBuffered,
        drop: c.samplesDropped,
      }
      if (runBar) runBar.update(Math.min(Math.round(tS), o.durationS), payload)
      else if (logProgress && Date.now() - lastLog >= 5000) {
        lastLog = Date.now()
        log(
          `t=${tS}s conn ${c.connected}/${p.users.length} ${point.publishesPerS} msg/s ${point.readingsPerS} readings/s ` +
            `ack p99 ${payload.p99} ms buffered ${c.samplesBuffered} dropped ${c.samplesDropped}`,
        )
      }
    }, 1000)
    await allFinal
    if (failure) throw failure
  } finally {
    if (timer) clearInterval(timer)
    runBar?.stop()
    process.off('SIGINT', onSigint)
    o.signal?.removeEventListener('abort', onAbort)
    if (failure) for (const h of handles) h.kill()
  }
  await Promise.all(handles.map((h) => h.exited))

  const done = finals.filter((f): f is FinalMessage => f !== null)
  const counters = zeroCounters()
  const alertKinds: Record<string, number> = {}
  const errors: Record<string, number> = {}
  const runs: RunsWire[] = []
  let tMin = Number.POSITIVE_INFINITY
  let tMax = 0
  for (const f of done) {
    addCounters(counters, f.counters)
    for (const [k, n] of Object.entries(f.alertKinds)) alertKinds[k] = (alertKinds[k] ?? 0) + n
    for (const [k, n] of Object.entries(f.errors)) errors[k] = (errors[k] ?? 0) + n
    for (const r of f.runs) runs.push(r)
    tMin = Math.min(tMin, f.tMin)
    tMax = Math.max(tMax, f.tMax)
  }
  const anomalies = done.flatMap((f) => f.anomalies)
  const appCopies = done.flatMap((f) => f.appCopies)

  // Verification.
  phase('verifying', instance)
  let verification: Verification = {
    status: 'unavailable',
    reason: null,
    via: null,
    expected: 0,
    found: 0,
    lost: 0,
    duplicates: 0,
    storedRows: 0,
    storedUnconfirmed: 0,
    unknownDevices: 0,
    queryMs: 0,
  }
  let convergence: AppConvergence = emptyConvergence(
    'skipped',
    appCopies.length === 0 ? 'no apps' : 'verification turned off or unavailable',
    appCopies.length,
  )
  if (!o.verify) verification = { ...verification, status: 'skipped', reason: 'verification turned off' }
  else if (tMax === 0) verification = { ...verification, status: 'skipped', reason: 'no samples were generated' }
  else {
    const db: VerifyDb | null = instance
      ? { via: 'instance', transaction: (fn) => instance.db.transaction(fn), close: async () => undefined }
      : config.databaseUrl
        ? pgVerifyDb(config.databaseUrl)
        : null
    if (!db) {
      verification.reason =
        'the embedded store belongs to the broker process; use --embedded-broker, or a broker with PULSEGATE_DATABASE_URL'
    } else {
      try {
        verification = await verify(
          db,
          runs,
          allDevices.map((d) => d.deviceId),
          tMin,
          tMax,
        )
      } catch (err) {
        verification = {
          ...verification,
          status: 'failed',
          reason: `verification query failed: ${(err as Error).message}`,
        }
      }
      try {
        if (appCopies.length > 0) convergence = await db.transaction((q) => compareAppCopies(q, appCopies))
      } catch (err) {
        convergence = { ...convergence, status: 'failed', reason: `comparison failed: ${(err as Error).message}` }
      } finally {
        await db.close()
      }
    }
  }
  const broker = instance ? await brokerCounters(instance) : null
  let wellness: WellnessReport | null = null
  if (history && daily) {
    daily.stopTiming()
    try {
      wellness = await scoreWellness(history, daily, userIds, finals, o)
    } finally {
      await history.db.close()
    }
  } else if (history) await history.db.close()

  // Rates from cumulative counters: the ticks are irregular when the event loop is busy (an embedded broker).
  const during = timeline.filter((pt) => pt.tS <= o.durationS + 0.5)
  const allUp = during.find((pt) => pt.connected >= Math.floor(p.users.length * 0.99))?.tS ?? null
  const from =
    (allUp !== null && allUp < o.durationS - 1 ? during.find((pt) => pt.tS >= allUp) : undefined) ??
    during.find((pt) => pt.tS >= o.durationS / 2)
  const to = during[during.length - 1]
  const span = from && to ? to.tS - from.tS : 0
  const perS = (k: 'ackedTotal' | 'readingsTotal') =>
    from && to && span > 0 ? Math.round((to[k] - from[k]) / span) : 0
  const lastAckS = [...timeline].reverse().find((pt) => pt.ackedPerS > 0)?.tS ?? 0
  // Ack latency over the same window as the rates: the acks of the ticks after `from` up to the end of sampling (the
  // ramp's handshakes and the final upload, every device sealing its batch at once, lie outside it).
  const steadyAck = newHistogram()
  for (const t of tickAcks) if (from && to && t.tS > from.tS && t.tS <= to.tS) steadyAck.add(t.h)
  const report: SwarmReport = {
    version: 1,
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    options: {
      devices: p.devices,
      users: p.users.length,
      durationS: o.durationS,
      rampPerS: o.rampPerS,
      scenario: o.scenario,
      qos: o.qos,
      batch: o.batch,
      rateHz: o.rateHz,
      format: o.format,
      workers: nWorkers,
      inProcess,
      appShare: o.appShare,
      anomalyShare: o.anomalyShare,
      bridgeShare: o.bridgeShare,
      inflight: o.inflight,
      bufferSamples: o.bufferSamples,
      seed: o.seed,
      offline: o.offline ?? null,
    },
    target: {
      mqtts: target.mqtts.join(','),
      ws: target.ws.join(','),
      mqtt: target.mqtt ? target.mqtt.join(',') : null,
      broker: ownBroker ? 'embedded' : instance ? 'in-process' : 'external',
      store: instance ? instance.db.kind : config.databaseUrl ? 'postgres' : 'embedded (external broker)',
    },
    provisioning: { certsIssued: certs.issued, certsCached: certs.cached, certMs, registerMs },
    connections: {
      devices: {
        attempts: counters.devAttempts,
        connected: counters.devConnects - counters.devReconnects,
        failed: counters.devFailures,
        refused: counters.devRefused,
        lost: counters.devLost,
        reconnects: counters.devReconnects,
      },
      bridges: {
        attempts: counters.bridgeAttempts,
        connected: counters.bridgeConnects - counters.bridgeReconnects,
        failed: counters.bridgeFailures,
        refused: counters.bridgeRefused,
        lost: counters.bridgeLost,
        reconnects: counters.bridgeReconnects,
      },
      apps: {
        attempts: counters.appAttempts,
        connected: counters.appConnects,
        failed: counters.appFailures,
        refused: counters.appRefused,
        lost: counters.appLost,
      },
      medics: { connected: counters.medicConnects, failed: counters.medicFailures },
      errors,
    },
    samples: {
      generated: counters.samplesGenerated,
      acked: counters.samplesAcked,
      dropped: counters.samplesDropped,
      bufferedAtEnd: counters.samplesBuffered,
      bufferedPeak: Math.max(counters.bufferedPeak, ...timeline.map((pt) => pt.buffered)),
    },
    readings: {
      generated: counters.readingsGenerated,
      acked: counters.readingsAcked,
      dropped: counters.readingsDropped,
      rejected: counters.readingsRejected,
    },
    messages: {
      sealed: counters.batchesSealed,
      published: counters.publishes,
      republished: counters.republishes,
      acked: counters.batchesAcked,
      priority: counters.priorityBatches,
      rejections: counters.rejections,
      rejectionsUnmapped: counters.rejectionsUnmapped,
      configReceived: counters.configReceived,
      configApplied: counters.configApplied,
    },
    offline: {
      planned: p.users.filter((u) => u.offline).length,
      cuts: counters.offlineCuts,
      cutsWhileUp: counters.offlineCutsWhileUp,
      late: counters.offlineCutsLate,
      recovered: counters.offlineRecovered,
      samplesBufferedWhileOffline: counters.bufferedWhileOffline,
      cutAtMs: o.offline ? t0 + o.offline.atS * 1000 : null,
      forS: o.offline?.forS ?? 0,
      deviceIds: p.users.filter((u) => u.offline).flatMap((u) => u.devices.map((d) => d.deviceId)),
    },
    throughput: {
      allConnectedAtS: allUp,
      windowS: [from?.tS ?? 0, to?.tS ?? 0],
      msgsPerS: perS('ackedTotal'),
      readingsPerS: perS('readingsTotal'),
      overallMsgsPerS: lastAckS > 0 ? Math.round(counters.batchesAcked / lastAckS) : 0,
      overallReadingsPerS: lastAckS > 0 ? Math.round(counters.readingsAcked / lastAckS) : 0,
      peakMsgsPerS: Math.max(0, ...timeline.map((pt) => pt.ackedPerS)),
      peakReadingsPerS: Math.max(0, ...timeline.map((pt) => pt.readingsPerS)),
    },
    latency: {
      ackMs: summarize(totals.ackUs, 0.001),
      ackSteadyMs: summarize(steadyAck, 0.001),
      alertMs: summarize(totals.alertMs),
      liveLagMs: summarize(totals.liveLagMs),
    },
    alerts: {
      anomalies: p.anomalies,
      anomaliesLeftOut: p.anomaliesLeftOut,
      anomaliesWatched: anomalies.filter((a) => a.watched).length,
      anomaliesAlerted: anomalies.filter((a) => a.alerts.length > 0).length,
      opened: counters.alertsOpened,
      resolved: counters.alertsResolved,
      unexpected: counters.alertsUnexpected,
      byKind: alertKinds,
      medicReceived: counters.medicAlerts,
      engine: instance
        ? instance.metrics.registry.getSingleMetric('pulsegate_alerts_opened_total') !== undefined
        : null,
    },
    outputs: { liveReceived: counters.liveReceived, leaderboardReceived: counters.leaderboardReceived },
    broker,
    workers: done.map((f) => f.self),
    verification,
    appConvergence: convergence,
    wellness,
    timeline,
    counters,
  }
  if (o.report) writeReport(o.report, report)
  if (o.svg) fs.writeFileSync(o.svg, svgChart(report))
  phase('done', instance)
  return report
}

export { summaryText }

interface HistoryDb {
  db: Db
  timescale: boolean
  close(): Promise<void>
}

/** The database the history goes into: the in-process broker's store, else PULSEGATE_DATABASE_URL. */
async function historyDb(instance: Pulsegate | null, config: BrokerConfig): Promise<HistoryDb> {
  if (instance) return { db: instance.db, timescale: instance.timescale, close: async () => undefined }
  if (!config.databaseUrl)
    throw new Error('--history-days writes to the database: use --embedded-broker, or PULSEGATE_DATABASE_URL')
  const db = openPostgres(config.databaseUrl, 2, createLogger('warn', 'simulate'))
  const ts = await db.query<{ ok: boolean }>(`SELECT to_regclass('samples_1m') IS NOT NULL AS ok`)
  return { db, timescale: ts.rows[0]?.ok === true, close: () => db.close() }
}

/**
 * The daily rules at "now" for the swarm's users, who grant `recommendations` only now (a broker's own scheduler would
 * otherwise pick them up first): in this process through the broker's engine, else through its /admin/rpc.
 */
async function runDaily(
  { db }: HistoryDb,
  instance: Pulsegate | null,
  config: BrokerConfig,
  userIds: readonly string[],
): Promise<DailyRun> {
  await grantRecommendations(db, userIds)
  const at = new Date()
  const started = performance.now()
  // In process, the broker's own publish of each recommendation: the delivery commits it, then publishes.
  const publishedAt = new Map<string, number>()
  const onPublish = (packet: { topic: string; payload: Buffer | string }) => {
    if (!/^users\/[^/]+\/recommendations$/.test(packet.topic)) return
    try {
      const id = (JSON.parse(packet.payload.toString()) as { id?: unknown }).id
      if (typeof id === 'string' && !publishedAt.has(id)) publishedAt.set(id, Date.now())
    } catch {
      // not a recommendation payload: nothing to time
    }
  }
  if (instance) {
    // Kept until the report is scored (stopTiming): run() resolves when the deliveries are committed, and the
    // broker's publish of each one (its 'publish' event, after the session store) may come after that.
    instance.broker.on('publish', onPublish)
    try {
      await instance.insights.run({ userIds, at })
    } catch (err) {
      instance.broker.off('publish', onPublish)
      throw err
    }
  } else
    await withOps(config, (op) => op({ op: 'insightsRun', at: at.toISOString() }), {
      brokerUrl: `http://127.0.0.1:${config.httpPort}`,
    })
  return {
    atMs: at.getTime(),
    runMs: Math.round(performance.now() - started),
    publishedAt: instance ? publishedAt : null,
    stopTiming: () => instance?.broker.off('publish', onPublish),
  }
}

interface DailyRun {
  atMs: number
  runMs: number
  /** recommendation id → when the broker published it (in process only) */
  publishedAt: Map<string, number> | null
  /** stops recording publishedAt */
  stopTiming(): void
}

interface WellnessHistory {
  db: HistoryDb
  plan: WellnessPlan
  rows: number
  ms: number
  featuresMs: number
}

async function scoreWellness(
  history: WellnessHistory,
  daily: DailyRun,
  userIds: readonly string[],
  finals: readonly (FinalMessage | null)[],
  o: Resolved,
): Promise<WellnessReport> {
  const got = await recommended(history.db.db, userIds, daily.atMs)
  const rules = score(history.plan, userIds, got)
  const receipts = finals.flatMap((f) => f?.recommendations ?? [])
  const receivedIds = new Set(receipts.map((r) => r.id))
  const planted = got.filter((g) => (PLANTED_RULES as readonly string[]).includes(g.rule))
  const otherRules: Record<string, number> = {}
  for (const g of got)
    if (!(PLANTED_RULES as readonly string[]).includes(g.rule)) otherRules[g.rule] = (otherRules[g.rule] ?? 0) + 1
  const lat = newHistogram()
  const fromPublish = newHistogram()
  for (const r of receipts) {
    if (r.createdAt !== daily.atMs) continue
    lat.recordValue(Math.max(1, r.receivedAt - r.createdAt))
    const pub = daily.publishedAt?.get(r.id)
    if (pub !== undefined) fromPublish.recordValue(Math.max(1, r.receivedAt - pub))
  }
  return {
    historyDays: o.historyDays,
    zone: history.plan.zone,
    at: new Date(daily.atMs).toISOString(),
    historyRows: history.rows,
    historyMs: history.ms,
    featuresMs: history.featuresMs,
    runMs: daily.runMs,
    rules,
    otherRules,
    appReceived: planted.filter((g) => receivedIds.has(g.id)).length,
    appMissing: planted.filter((g) => !receivedIds.has(g.id)).length,
    latencyMs: summarize(lat),
    publishToAppMs: daily.publishedAt ? summarize(fromPublish) : null,
    thresholds: { precision: o.minPrecision, recall: o.minRecall },
    failures: scoreFailures(rules, o.minPrecision, o.minRecall),
  }
}
