// The recommendation engine's counters, on the broker's registry (Metrics.registry), so /metrics shows them.
import { Counter, Histogram, type Registry } from 'prom-client'

export function createInsightsMetrics(registry: Registry) {
  const registers = [registry]
  return {
    delivered: new Counter({
      name: 'pulsegate_recommendations_total',
      help: 'recommendations sent, by rule and kind (new, or redelivery of one already sent: same id)',
      labelNames: ['rule', 'kind'],
      registers,
    }),
    suppressed: new Counter({
      name: 'pulsegate_recommendations_suppressed_total',
      help: 'recommendations a rule proposed and the delivery layer held back, by rule and reason (consent, muted, quiet_hours, budget, cooldown, recovery_day, expired)',
      labelNames: ['rule', 'reason'],
      registers,
    }),
    runs: new Counter({
      name: 'pulsegate_insights_runs_total',
      help: 'rule evaluations by kind (daily: scheduled by local time; streaming: move reminders; manual: CLI/RPC)',
      labelNames: ['kind'],
      registers,
    }),
    users: new Counter({
      name: 'pulsegate_insights_users_evaluated_total',
      help: 'users whose rules were evaluated, by kind',
      labelNames: ['kind'],
      registers,
    }),
    failures: new Counter({
      name: 'pulsegate_insights_failures_total',
      help: 'evaluations that failed (database errors); the users stay due and are tried at the next tick',
      labelNames: ['kind'],
      registers,
    }),
    seconds: new Histogram({
      name: 'pulsegate_insights_run_seconds',
      help: 'time of one evaluation round (features, rules, delivery)',
      labelNames: ['kind'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
      registers,
    }),
  }
}

export type InsightsMetrics = ReturnType<typeof createInsightsMetrics>
