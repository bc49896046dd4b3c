// Measuring helpers shared by the benchmarks: HDR histograms (merged across worker processes), CPU of this process
// and of other processes (/proc), machine-wide CPU, Prometheus-registry snapshots and their differences.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import * as hdr from 'hdr-histogram-js'
import type { Registry } from 'prom-client'

/** Latencies in microseconds, 1 µs … 120 s, 3 significant digits. */
export function latencyHistogram(): hdr.Histogram {
  return hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 })
}

export const encodeHistogram = (h: hdr.Histogram): string => hdr.encodeIntoCompressedBase64(h)

export function mergeHistograms(encoded: string[]): hdr.Histogram {
  const out = latencyHistogram()
  for (const e of encoded) out.add(hdr.decodeFromCompressedBase64(e))
  return out
}

export interface LatencySummary {
  count: number
  p50: number
  p90: number
  p99: number
  p999: number
  max: number
  mean: number
}

/** Histogram of µs → summary in ms. */
export function summarizeMs(h: hdr.Histogram): LatencySummary {
  const ms = (us: number) => Math.round(us) / 1000
  return {
    count: h.totalCount,
    p50: ms(h.getValueAtPercentile(50)),
    p90: ms(h.getValueAtPercentile(90)),
    p99: ms(h.getValueAtPercentile(99)),
    p999: ms(h.getValueAtPercentile(99.9)),
    max: ms(h.maxValue),
    mean: ms(h.mean),
  }
}

export function loadavg(): string {
  return os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')
}

const CLK_TCK = 100

/** utime+stime of a process in seconds (from /proc), or null if it is gone. */
export function procCpuSeconds(pid: number): number | null {
  try {
    const s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = s.slice(s.lastIndexOf(')') + 2).split(' ')
    // fields[11] = utime, fields[12] = stime (0-based after the comm field)
    return (Number(fields[11]) + Number(fields[12])) / CLK_TCK
  } catch {
    return null
  }
}

/** pids of processes named `postgres` (the server and all its backends, any database). */
export function postgresPids(): number[] {
  const out: number[] = []
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue
    try {
      if (fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim() === 'postgres') out.push(Number(d))
    } catch {
      // gone
    }
  }
  return out
}
export const cpuOf = (pids: number[]) => {
  const m = new Map<number, number>()
  for (const p of pids) {
    const s = procCpuSeconds(p)
    if (s !== null) m.set(p, s)
  }
  return m
}
export const cpuDelta = (before: Map<number, number>, after: Map<number, number>) => {
  let d = 0
  for (const [p, s] of after) d += s - (before.get(p) ?? s)
  return d
}

/** Machine-wide CPU ticks: busy and total (all cores). */
export function machineCpu(): { busy: number; total: number } {
  const line = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0] as string
  const v = line.trim().split(/\s+/).slice(1).map(Number)
  const idle = (v[3] ?? 0) + (v[4] ?? 0)
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0)
  return { busy: total - idle, total }
}

/** Busy share of the whole machine between two machineCpu() readings, in "cores" (0…nproc). */
export function machineCores(a: { busy: number; total: number }, b: { busy: number; total: number }): number {
  const dt = b.total - a.total
  return dt > 0 ? ((b.busy - a.busy) / dt) * os.availableParallelism() : 0
}

export interface MetricSnapshot {
  /** counters and gauges: `name{labels}` → value */
  values: Map<string, number>
  /** histograms: name → cumulative bucket counts by upper bound, sum, count */
  histograms: Map<string, { buckets: [number, number][]; sum: number; count: number }>
}

interface PromValue {
  value: number
  labels: Record<string, string | number>
  metricName?: string
}
interface PromMetric {
  name: string
  type: string
  values: PromValue[]
}

const labelKey = (labels: Record<string, string | number>) => {
  const e = Object.entries(labels).filter(([k]) => k !== 'le')
  return e.length === 0 ? '' : `{${e.map(([k, v]) => `${k}=${v}`).join(',')}}`
}

export async function snapshotMetrics(registry: Registry): Promise<MetricSnapshot> {
  const json = (await registry.getMetricsAsJSON()) as unknown as PromMetric[]
  const values = new Map<string, number>()
  const histograms: MetricSnapshot['histograms'] = new Map()
  for (const m of json) {
    if (m.type === 'histogram') {
      // Unlabelled histograms only (the ingest ones); labelled ones would need a key per label set.
      const buckets: [number, number][] = []
      let sum = 0
      let count = 0
      for (const v of m.values) {
        if (v.metricName?.endsWith('_bucket')) {
          const le = v.labels['le']
          buckets.push([le === '+Inf' ? Number.POSITIVE_INFINITY : Number(le), v.value])
        } else if (v.metricName?.endsWith('_sum')) sum = v.value
        else if (v.metricName?.endsWith('_count')) count = v.value
      }
      histograms.set(m.name, { buckets, sum, count })
    } else {
      for (const v of m.values) values.set(`${m.name}${labelKey(v.labels)}`, v.value)
    }
  }
  return { values, histograms }
}

export interface HistogramDelta {
  count: number
  mean: number
  /** upper bound of the bucket holding the percentile (Prometheus buckets are coarse) */
  p50le: number
  p90le: number
  p99le: number
  /** count per bucket upper bound, within the interval */
  buckets: Record<string, number>
}

export function histogramDelta(a: MetricSnapshot, b: MetricSnapshot, name: string): HistogramDelta | null {
  const hb = b.histograms.get(name)
  if (!hb) return null
  const ha = a.histograms.get(name)
  const count = hb.count - (ha?.count ?? 0)
  const sum = hb.sum - (ha?.sum ?? 0)
  const cum = hb.buckets.map(([le, c], i) => [le, c - (ha?.buckets[i]?.[1] ?? 0)] as [number, number])
  const at = (q: number) => {
    for (const [le, c] of cum) if (c >= q * count) return le
    return Number.POSITIVE_INFINITY
  }
  const buckets: Record<string, number> = {}
  let prev = 0
  for (const [le, c] of cum) {
    buckets[String(le)] = c - prev
    prev = c
  }
  return { count, mean: count > 0 ? sum / count : 0, p50le: at(0.5), p90le: at(0.9), p99le: at(0.99), buckets }
}

/** Sum of counter differences for every series whose key starts with `prefix`. */
export function counterDelta(a: MetricSnapshot, b: MetricSnapshot, prefix: string): number {
  let d = 0
  for (const [k, v] of b.values) if (k === prefix || k.startsWith(`${prefix}{`)) d += v - (a.values.get(k) ?? 0)
  return d
}

/** Counter differences per series (only the non-zero ones). */
export function counterSeries(a: MetricSnapshot, b: MetricSnapshot, prefix: string): Record<string, number> {
  const out: Record<string, number> = {}
  for (const [k, v] of b.values) {
    if (k === prefix || k.startsWith(`${prefix}{`)) {
      const d = v - (a.values.get(k) ?? 0)
      if (d !== 0) out[k] = d
    }
  }
  return out
}

export const mb = (bytes: number) => Math.round((bytes / 1048576) * 10) / 10
export const round = (x: number, digits = 1) => Math.round(x * 10 ** digits) / 10 ** digits
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Short hash of the compiled broker (dist/src/**\/*.js and broker.config.js) the figures were measured on. */
export function brokerBuildHash(): string {
  const root = new URL('../../', import.meta.url)
  const h = crypto.createHash('sha256')
  const walk = (dir: URL) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((x, y) => x.name.localeCompare(y.name))) {
      const u = new URL(e.isDirectory() ? `${e.name}/` : e.name, dir)
      if (e.isDirectory()) walk(u)
      else if (e.name.endsWith('.js')) h.update(e.name).update(fs.readFileSync(u))
    }
  }
  walk(new URL('src/', root))
  h.update(fs.readFileSync(new URL('broker.config.js', root)))
  return h.digest('hex').slice(0, 12)
}
