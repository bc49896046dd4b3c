// The operators' monitoring cannot rot: every metric the Grafana dashboard (deploy/grafana/) and the Prometheus alert
// rules (deploy/prometheus/alerts.yml) read exists on a real broker's /metrics, and the dashboard and rules cover
// what an operator watches. promtool's syntax checks are in deploy.test.ts.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parse } from 'yaml'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { REDIS_URL, startTestBroker, type TestBroker } from '../helpers/harness.js'
import { exposedNames, metricNames } from '../helpers/promql.js'

const root = fileURLToPath(new URL('../..', import.meta.url))
/** Series that other scrape targets or Prometheus itself provide: HAProxy's exporter, `up`, `ALERTS`. */
const external = (name: string) => name === 'up' || name === 'ALERTS' || name.startsWith('haproxy_')

interface Panel {
  type: string
  title: string
  targets?: { expr: string }[]
}
const dashboard = JSON.parse(fs.readFileSync(path.join(root, 'deploy/grafana/pulsegate-dashboard.json'), 'utf8')) as {
  panels: Panel[]
}
const rules = (
  parse(fs.readFileSync(path.join(root, 'deploy/prometheus/alerts.yml'), 'utf8')) as {
    groups: { rules: { alert: string; expr: string }[] }[]
  }
).groups.flatMap((g) => g.rules)

const panelExprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => ({ where: p.title, expr: t.expr })))
const ruleExprs = rules.map((r) => ({ where: r.alert, expr: r.expr }))

describe('dashboard and alert rules against /metrics', () => {
  let tb: TestBroker
  let exposed: Set<string>

  beforeAll(async () => {
    // Redis (cluster mode) and a PROXY-protocol listener: every optional family is registered.
    tb = await startTestBroker('postgres', {
      redisUrl: REDIS_URL,
      cluster: { prefix: `mon-${crypto.randomBytes(5).toString('hex')}` },
      proxy: { http: 'optional', trusted: ['127.0.0.2/32'] },
    })
    const text = await (await fetch(`http://127.0.0.1:${tb.pg.ports.http}/metrics`)).text()
    exposed = exposedNames(text)
  }, 60_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('the expression parser finds names, and knows the suffixes of histograms', () => {
    expect(
      metricNames('histogram_quantile(0.99, sum by (node, le) (rate(pulsegate_ingest_commit_seconds_bucket[5m])))'),
    ).toEqual(['pulsegate_ingest_commit_seconds_bucket'])
    expect(metricNames('a_total{x="b_c", node=~"$node"} / clamp_min(sum by (node) (c_d), 1) > 0.5')).toEqual([
      'a_total',
      'c_d',
    ])
    expect(exposed.has('pulsegate_ingest_commit_seconds_bucket')).toBe(true)
    expect(exposed.has('pulsegate_no_such_metric')).toBe(false)
  })

  it.each([
    ['dashboard', panelExprs],
    ['alert rules', ruleExprs],
  ])('every metric the %s read exists', (_what, exprs) => {
    expect(exprs.length).toBeGreaterThan(5)
    const missing: string[] = []
    let checked = 0
    for (const { where, expr } of exprs) {
      const names = metricNames(expr)
      expect(names.length, `${where}: ${expr}`).toBeGreaterThan(0)
      for (const n of names) {
        if (external(n)) continue
        checked++
        if (!exposed.has(n)) missing.push(`${where}: ${n}`)
      }
    }
    expect(missing).toEqual([])
    expect(checked).toBeGreaterThan(5)
  })

  it('the dashboard shows what an operator watches, per node', () => {
    const all = panelExprs.map((e) => e.expr).join('\n')
    for (const name of [
      'pulsegate_connections', // connections by role
      'pulsegate_ingest_samples_accepted_total',
      'pulsegate_ingest_samples_rejected_total',
      'pulsegate_ingest_rows_committed_total',
      'pulsegate_ingest_commit_seconds_bucket',
      'pulsegate_ingest_queue_rows',
      'pulsegate_alerts_opened_total',
      'pulsegate_publish_out_total',
      'pulsegate_ingest_refused_total',
      'pulsegate_ingest_dropped_total',
      'pulsegate_auth_refusals_total',
      'nodejs_gc_duration_seconds_sum',
      'nodejs_eventloop_lag_p99_seconds',
      'pulsegate_db_up',
      'pulsegate_redis_up',
      'pulsegate_db_queue_depth',
      'pulsegate_db_queue_rejected_total',
      'pulsegate_db_queue_wait_seconds_bucket',
    ])
      expect(all, name).toContain(name)
    expect(all).toContain('sum by (node, role) (pulsegate_connections')
    for (const q of ['0.5', '0.9', '0.99']) expect(all).toContain(`histogram_quantile(${q},`)
    // Every pulsegate series is split or filtered by node.
    for (const { where, expr } of panelExprs)
      if (metricNames(expr).some((n) => !external(n))) expect(expr, where).toMatch(/node/)
  })

  it('the alert rules cover latency, queue, refusals, QoS 0 drops, auth, event-loop lag, Redis and database down', () => {
    const read = (alert: string) => metricNames(rules.find((r) => r.alert === alert)?.expr ?? '')
    expect(read('PulsegateCommitSlow')).toContain('pulsegate_ingest_commit_seconds_bucket')
    expect(read('PulsegateQueueDeep')).toContain('pulsegate_ingest_queue_rows')
    expect(read('PulsegateIngestRefusing')).toContain('pulsegate_ingest_refused_total')
    expect(read('PulsegateQoS0Dropped')).toContain('pulsegate_ingest_dropped_total')
    expect(read('PulsegateAuthFailures')).toContain('pulsegate_auth_refusals_total')
    expect(read('PulsegateEventLoopLag')).toContain('nodejs_eventloop_lag_p99_seconds')
    expect(read('PulsegateRedisDown')).toContain('pulsegate_redis_up')
    expect(read('PulsegateDatabaseDown')).toContain('pulsegate_db_up')
    expect(read('PulsegateDbLaneRefusing')).toContain('pulsegate_db_queue_rejected_total')
  })
})
