// The swarm's report: one JSON document (stable field names, for CI and comparisons), a human summary, and an
// optional SVG chart of rates and ack latency over time.
import fs from 'node:fs'
import path from 'node:path'
import type { Histogram } from 'hdr-histogram-js'
import type { AppConvergence } from './app-verify.js'
import type { AnomalyKind } from './physiology.js'
import type { Counters, Format, Scenario, WorkerSelf } from './protocol.js'
import type { RuleScore } from './wellness-history.js'

export interface LatencySummary {
  count: number
  mean: number
  p50: number
  p90: number
  p99: number
  p999: number
  max: number
}

/** Percentiles of an HDR histogram, scaled (e.g. µs → ms with 0.001). */
export function summarize(h: Histogram, scale = 1): LatencySummary {
  if (h.totalCount === 0) return { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 }
  const r = (v: number) => Math.round(v * scale * 1000) / 1000
  return {
    count: h.totalCount,
    mean: r(h.mean),
    p50: r(h.getValueAtPercentile(50)),
    p90: r(h.getValueAtPercentile(90)),
    p99: r(h.getValueAtPercentile(99)),
    p999: r(h.getValueAtPercentile(99.9)),
    max: r(h.maxValue),
  }
}

export interface TimelinePoint {
  /** seconds since the start of the run */
  tS: number
  connected: number
  publishesPerS: number
  ackedPerS: number
  readingsPerS: number
  ackP50Ms: number
  ackP99Ms: number
  buffered: number
  dropped: number
  /** cumulative, for rates over any span */
  ackedTotal: number
  readingsTotal: number
}

export type VerificationStatus = 'ok' | 'failed' | 'unavailable' | 'skipped'

export interface Verification {
  status: VerificationStatus
  reason: string | null
  /** where the rows were counted: the in-process broker's store, or a pg connection to PULSEGATE_DATABASE_URL */
  via: 'instance' | 'postgres' | null
  /** acked readings (QoS 0: sent) minus those the broker refused, each identified by (device, metric, t) */
  expected: number
  /** expected readings found in samples/positions */
  found: number
  lost: number
  duplicates: number
  /** rows of the run's devices in the run's time window (metrics 1–6 and positions; derived distance excluded) */
  storedRows: number
  /** stored rows the devices never saw acknowledged (their ack was pending or lost at the end) */
  storedUnconfirmed: number
  /** devices whose rows could not be looked up (not registered) */
  unknownDevices: number
  queryMs: number
}

export interface SwarmReport {
  version: 1
  startedAt: string
  finishedAt: string
  options: {
    devices: number
    users: number
    durationS: number
    rampPerS: number
    scenario: Scenario
    qos: 0 | 1
    batch: number
    rateHz: number
    format: Format
    workers: number
    inProcess: boolean
    appShare: number
    anomalyShare: number
    bridgeShare: number
    inflight: number
    bufferSamples: number
    seed: number
    offline: { share: number; atS: number; forS: number } | null
  }
  target: {
    mqtts: string
    ws: string
    mqtt: string | null
    broker: 'embedded' | 'in-process' | 'external'
    store: string
  }
  provisioning: { certsIssued: number; certsCached: number; certMs: number; registerMs: number }
  connections: {
    devices: { attempts: number; connected: number; failed: number; refused: number; lost: number; reconnects: number }
    bridges: { attempts: number; connected: number; failed: number; refused: number; lost: number; reconnects: number }
    apps: { attempts: number; connected: number; failed: number; refused: number; lost: number }
    medics: { connected: number; failed: number }
    /** connection errors and refusals by role and code */
    errors: Record<string, number>
  }
  samples: { generated: number; acked: number; dropped: number; bufferedAtEnd: number; bufferedPeak: number }
  readings: { generated: number; acked: number; dropped: number; rejected: number }
  messages: {
    sealed: number
    published: number
    republished: number
    acked: number
    priority: number
    rejections: number
    rejectionsUnmapped: number
    configReceived: number
    configApplied: number
  }
  offline: {
    /** links the tunnel is to cut (one per offline user) */
    planned: number
    /** links cut: at cutAtMs, or once up for a link still in its first handshake then; none after sampling ends */
    cuts: number
    /** of those, links that were up when cut (all of the tunnel's): each must end in a reconnect */
    cutsWhileUp: number
    /** cuts later than cutAtMs: the link was not up yet (a slow ramp) */
    late: number
    /** cut links that got a CONNACK again after the tunnel */
    recovered: number
    samplesBufferedWhileOffline: number
    /** epoch ms when the links were cut, null when no cut was planned */
    cutAtMs: number | null
    forS: number
    /** the devices behind the cut links */
    deviceIds: string[]
  }
  throughput: {
    /** when 99 % of the device/bridge links were up; null: never during sampling */
    allConnectedAtS: number | null
    /** the span the rates are measured over: from allConnectedAtS (else mid-run) to the end of sampling */
    windowS: [number, number]
    /** acked batches and readings per second over windowS */
    msgsPerS: number
    readingsPerS: number
    /** over the whole run, first sample to last ack (includes ramp-up and the final upload) */
    overallMsgsPerS: number
    overallReadingsPerS: number
    peakMsgsPerS: number
    peakReadingsPerS: number
  }
  latency: {
    ackMs: LatencySummary
    /** acks within the throughput window (from all connected, else mid-run, to the end of sampling) */
    ackSteadyMs: LatencySummary
    alertMs: LatencySummary
    liveLagMs: LatencySummary
  }
  alerts: {
    anomalies: Partial<Record<AnomalyKind, number>>
    /** kinds not injected because the run is too short for their rule: kind → seconds after onset it needs */
    anomaliesLeftOut: Partial<Record<AnomalyKind, number>>
    /** anomalies of users with an app connected: these are the ones that can be seen arriving */
    anomaliesWatched: number
    anomaliesAlerted: number
    opened: number
    resolved: number
    unexpected: number
    byKind: Record<string, number>
    medicReceived: number
    /** the in-process broker exposes pulsegate_alerts_opened_total; null: an external broker, not known */
    engine: boolean | null
  }
  outputs: { liveReceived: number; leaderboardReceived: number }
  broker: Record<string, number> | null
  /** each worker's event-loop delay and CPU: high lag means the simulator, not the broker, set the pace */
  workers: WorkerSelf[]
  verification: Verification
  /** each app's local copy against the database for its user (app-verify.ts) */
  appConvergence: AppConvergence
  /** `--history-days`: the planted conditions against what the daily rules recommended; null without */
  wellness: WellnessReport | null
  timeline: TimelinePoint[]
  counters: Counters
}

export interface WellnessReport {
  historyDays: number
  /** the users' zone (late morning at the run) and the virtual "now" the rules ran at */
  zone: string
  at: string
  historyRows: number
  historyMs: number
  /** the past days' features, computed before the run (as the nightly scheduler would have) */
  featuresMs: number
  /** the daily rules' run (features, rules, delivery) */
  runMs: number
  /** per planted rule: true/false positives/negatives, precision and recall */
  rules: Record<string, RuleScore>
  /** recommendations of other rules (not planted, not scored) */
  otherRules: Record<string, number>
  /** recommendations of the planted rules that reached the user's app over MQTT, and those that did not */
  appReceived: number
  appMissing: number
  /** rule evaluation (the run's start, the payload's createdAt: lookback features, rules, commit, publish) → app
   *  receipt, ms */
  latencyMs: LatencySummary
  /** the broker's publish → app receipt, ms (Aedes emits 'publish' once the packet is handed to the subscribers'
   *  connections; the delivery publishes as soon as its INSERT has committed); null with a broker in another process */
  publishToAppMs: LatencySummary | null
  thresholds: { precision: number; recall: number }
  /** the rules below a threshold (empty: pass) */
  failures: string[]
}

const fmt = (n: number, digits = 0) =>
  n.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits })

export function summaryText(r: SwarmReport): string {
  const o = r.options
  const c = r.connections
  const l = r.latency
  const v = r.verification
  // QoS 0 has no PUBACK: "acked" counts what left the device.
  const acked = o.qos === 0 ? 'sent (QoS 0)' : 'acked'
  const lines = [
    `pulsegate swarm: ${fmt(o.devices)} devices (${fmt(o.users)} users) × ${o.durationS} s, ${o.scenario}, QoS ${o.qos}, ` +
      `${o.format}, ${o.batch} samples/batch at ${o.rateHz} Hz, ${o.workers} worker${o.workers === 1 ? '' : 's'}` +
      `${o.inProcess ? ' (in process)' : ''}`,
    `target: ${r.target.mqtts} · ${r.target.ws} (${r.target.broker} broker, ${r.target.store} store)`,
    `provisioning: ${fmt(r.provisioning.certsIssued)} certs issued, ${fmt(r.provisioning.certsCached)} cached ` +
      `(${fmt(r.provisioning.certMs / 1000, 1)} s), registration ${fmt(r.provisioning.registerMs / 1000, 1)} s`,
    `connections: devices ${fmt(c.devices.connected)}/${fmt(c.devices.attempts)} ok, ${fmt(c.devices.failed)} failed, ` +
      `${fmt(c.devices.refused)} refused, ${fmt(c.devices.lost)} lost, ${fmt(c.devices.reconnects)} reconnects; ` +
      `bridges ${fmt(c.bridges.connected)}/${fmt(c.bridges.attempts)}; apps ${fmt(c.apps.connected)}/${fmt(c.apps.attempts)}; ` +
      `medics ${c.medics.connected}` +
      (Object.keys(c.errors).length > 0
        ? `\n  connection errors: ${Object.entries(c.errors)
            .map(([k, n]) => `${k} ×${n}`)
            .join(', ')}`
        : ''),
    `samples: ${fmt(r.samples.generated)} generated, ${fmt(r.samples.acked)} ${acked}, ${fmt(r.samples.dropped)} dropped, ` +
      `${fmt(r.samples.bufferedAtEnd)} still buffered (peak ${fmt(r.samples.bufferedPeak)})`,
    `readings: ${fmt(r.readings.generated)} generated, ${fmt(r.readings.acked)} ${acked}, ${fmt(r.readings.dropped)} dropped, ` +
      `${fmt(r.readings.rejected)} rejected`,
    `messages: ${fmt(r.messages.published)} published (${fmt(r.messages.republished)} resent), ${fmt(r.messages.acked)} ${acked}, ` +
      `${fmt(r.messages.priority)} priority`,
    `throughput ${r.throughput.allConnectedAtS === null ? '(links never all up; second half)' : '(all connected)'} ` +
      `${fmt(r.throughput.windowS[0], 1)}–${fmt(r.throughput.windowS[1], 1)} s: ` +
      `${fmt(r.throughput.msgsPerS)} msgs/s, ${fmt(r.throughput.readingsPerS)} readings/s; ` +
      `whole run ${fmt(r.throughput.overallMsgsPerS)} / ${fmt(r.throughput.overallReadingsPerS)}; ` +
      `peak ${fmt(r.throughput.peakMsgsPerS)} / ${fmt(r.throughput.peakReadingsPerS)}`,
    o.qos === 0
      ? 'ack latency: none at QoS 0'
      : `ack latency ms: p50 ${fmt(l.ackMs.p50, 1)}  p90 ${fmt(l.ackMs.p90, 1)}  p99 ${fmt(l.ackMs.p99, 1)}  ` +
        `p99.9 ${fmt(l.ackMs.p999, 1)}  max ${fmt(l.ackMs.max, 1)}  (n=${fmt(l.ackMs.count)}); ` +
        `in the throughput window p50 ${fmt(l.ackSteadyMs.p50, 1)}  p99 ${fmt(l.ackSteadyMs.p99, 1)}  ` +
        `(n=${fmt(l.ackSteadyMs.count)})`,
    `alerts: ${
      Object.entries(r.alerts.anomalies)
        .map(([k, n]) => `${n} ${k}`)
        .join(', ') || 'no anomalies'
    } injected, ${r.alerts.anomaliesAlerted}/${r.alerts.anomaliesWatched} watched ones alerted; ` +
      Object.entries(r.alerts.anomaliesLeftOut)
        .map(([k, s]) => `${k} left out (its rule needs ${s} s after onset, longer than this run gives); `)
        .join('') +
      `${r.alerts.opened} opened, ${r.alerts.unexpected} unexpected, medic ${r.alerts.medicReceived}` +
      (r.alerts.engine === false ? ' (no alert engine in the broker)' : '') +
      (l.alertMs.count > 0 ? `; latency ms p50 ${fmt(l.alertMs.p50, 1)} p99 ${fmt(l.alertMs.p99, 1)}` : ''),
    `outputs: ${fmt(r.outputs.liveReceived)} live, ${fmt(r.outputs.leaderboardReceived)} leaderboard messages` +
      (l.liveLagMs.count > 0 ? `; live lag ms p50 ${fmt(l.liveLagMs.p50)} p99 ${fmt(l.liveLagMs.p99)}` : ''),
  ]
  if (r.workers.length > 0) {
    const worst = Math.max(...r.workers.map((w) => w.loopLagP99Ms))
    const cpu = r.workers.reduce((n, w) => n + w.cpuUserS + w.cpuSystemS, 0)
    lines.push(
      `simulator: event-loop delay p99 ${fmt(worst, 1)} ms (worst worker), CPU ${fmt(cpu, 1)} s, ` +
        `RSS ${r.workers.map((w) => `${w.rssMb}`).join('+')} MB${worst > 200 ? ' — the load generator was saturated' : ''}`,
    )
  }
  if (r.offline.planned > 0) {
    lines.push(
      `offline: ${r.offline.cuts}/${r.offline.planned} links cut (${r.offline.late} later than planned: not up yet), ` +
        `${r.offline.recovered} back up after, ${fmt(r.offline.samplesBufferedWhileOffline)} samples buffered meanwhile`,
    )
  }
  const w = r.wellness
  if (w) {
    lines.push(
      `wellness history: ${w.historyDays} days, ${fmt(w.historyRows)} rows in ${fmt(w.historyMs / 1000, 1)} s, ` +
        `features ${fmt(w.featuresMs / 1000, 1)} s; ` +
        `daily rules at ${w.at} (${w.zone}) in ${fmt(w.runMs / 1000, 1)} s`,
    )
    const pct = (x: number | null) => (x === null ? '—' : x.toFixed(3))
    for (const [rule, s] of Object.entries(w.rules))
      lines.push(
        `  ${rule.padEnd(13)} planted ${s.planted}: TP ${s.truePositives} FP ${s.falsePositives} ` +
          `FN ${s.falseNegatives} TN ${s.trueNegatives}  precision ${pct(s.precision)} recall ${pct(s.recall)}`,
      )
    lines.push(
      `  apps received ${w.appReceived} of the planted rules' recommendations (${w.appMissing} missing); ` +
        `evaluation → app ms p50 ${fmt(w.latencyMs.p50, 1)} p99 ${fmt(w.latencyMs.p99, 1)} (n=${w.latencyMs.count})` +
        (w.publishToAppMs
          ? `, broker publish → app ms p50 ${fmt(w.publishToAppMs.p50, 1)} p99 ${fmt(w.publishToAppMs.p99, 1)}`
          : '') +
        '; ' +
        `other rules ${JSON.stringify(w.otherRules)}` +
        (w.failures.length > 0 ? `\n  BELOW THRESHOLD: ${w.failures.join('; ')}` : ''),
    )
  }
  lines.push(
    v.status === 'unavailable' || v.status === 'skipped'
      ? `verification: ${v.status} (${v.reason})`
      : `verification (${v.via}): ${v.status.toUpperCase()}: ${fmt(v.expected)} expected, ${fmt(v.found)} found, ` +
          `${fmt(v.lost)} lost, ${fmt(v.duplicates)} duplicates; ${fmt(v.storedRows)} rows stored ` +
          `(${fmt(v.storedUnconfirmed)} never confirmed to the device)${v.reason ? ` — ${v.reason}` : ''}`,
  )
  const a = r.appConvergence
  lines.push(
    a.status === 'skipped'
      ? `apps' copies: skipped (${a.reason})`
      : `apps' copies: ${a.status.toUpperCase()}: ${fmt(a.apps)} apps, ${fmt(a.rows)} rows held, ${fmt(a.syncs)} sync pages, ` +
          `${fmt(r.counters.appDrops)} links dropped on purpose; ${fmt(a.missing)} missing, ${fmt(a.extra)} extra, ` +
          `${fmt(a.duplicated)} duplicated, ${fmt(a.incomplete)} not caught up${a.reason ? ` — ${a.reason}` : ''}`,
  )
  return lines.join('\n')
}

export function writeReport(file: string, r: SwarmReport): void {
  fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true })
  fs.writeFileSync(file, `${JSON.stringify(r, null, 2)}\n`)
}

/** Two panels over time: messages and readings per second; ack latency p50/p99. */
export function svgChart(r: SwarmReport): string {
  const W = 900
  const H = 520
  const pad = { l: 70, r: 70, t: 40, b: 40 }
  const panelH = (H - pad.t - pad.b - 40) / 2
  const pts = r.timeline
  const tMax = Math.max(1, ...pts.map((p) => p.tS))
  const x = (t: number) => pad.l + ((W - pad.l - pad.r) * t) / tMax
  const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;')
  const line = (vals: number[], top: number, max: number, color: string) => {
    const d = pts
      .map(
        (p, i) =>
          `${i === 0 ? 'M' : 'L'}${x(p.tS).toFixed(1)},${(top + panelH - (panelH * (vals[i] ?? 0)) / max).toFixed(1)}`,
      )
      .join(' ')
    return `<path d="${d}" fill="none" stroke="${color}" stroke-width="1.6"/>`
  }
  const axis = (top: number, max: number, label: string, right = false) => {
    const ticks = [0, 0.25, 0.5, 0.75, 1]
    const xPos = right ? W - pad.r : pad.l
    const anchor = right ? 'start' : 'end'
    const dx = right ? 6 : -6
    return [
      `<line x1="${pad.l}" y1="${top + panelH}" x2="${W - pad.r}" y2="${top + panelH}" stroke="#999"/>`,
      ...ticks.map((f) => {
        const y = top + panelH - panelH * f
        return (
          `<line x1="${pad.l}" y1="${y}" x2="${W - pad.r}" y2="${y}" stroke="#eee"/>` +
          `<text x="${xPos + dx}" y="${y + 4}" font-size="11" text-anchor="${anchor}">${fmt(max * f, max < 10 ? 1 : 0)}</text>`
        )
      }),
      `<text x="${xPos + dx}" y="${top - 8}" font-size="12" text-anchor="${anchor}">${esc(label)}</text>`,
    ].join('')
  }
  const top1 = pad.t
  const top2 = pad.t + panelH + 40
  const rateMax = Math.max(1, ...pts.map((p) => p.readingsPerS))
  const msgMax = Math.max(1, ...pts.map((p) => p.publishesPerS))
  const latMax = Math.max(1, ...pts.map((p) => p.ackP99Ms))
  const xTicks = Array.from({ length: 7 }, (_, i) => (tMax * i) / 6)
  const o = r.options
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="${pad.l}" y="20" font-size="14">${esc(`pulsegate swarm: ${o.devices} devices, ${o.scenario}, QoS ${o.qos}, ${o.format}, batch ${o.batch}`)}</text>
${axis(top1, rateMax, 'readings acked/s (blue)')}${axis(top1, msgMax, 'msgs published/s (orange)', true)}
${line(
  pts.map((p) => p.readingsPerS),
  top1,
  rateMax,
  '#1f77b4',
)}${line(
  pts.map((p) => p.publishesPerS),
  top1,
  msgMax,
  '#ff7f0e',
)}
${axis(top2, latMax, 'ack latency ms: p50 (green), p99 (red)')}
${line(
  pts.map((p) => p.ackP50Ms),
  top2,
  latMax,
  '#2ca02c',
)}${line(
  pts.map((p) => p.ackP99Ms),
  top2,
  latMax,
  '#d62728',
)}
<line x1="${x(o.durationS)}" y1="${pad.t}" x2="${x(o.durationS)}" y2="${H - pad.b}" stroke="#888" stroke-dasharray="4 4"/>
<text x="${x(o.durationS) + 4}" y="${pad.t + 12}" font-size="11">sampling ends</text>
${xTicks.map((t) => `<text x="${x(t)}" y="${H - pad.b + 16}" font-size="11" text-anchor="middle">${fmt(t)} s</text>`).join('')}
</svg>
`
}
