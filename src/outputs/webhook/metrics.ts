// Metrics of the webhook output (every series also has the registry's `node` label).
import { Counter, Gauge, Histogram, type Registry } from 'prom-client'

export function createWebhookMetrics(registry: Registry) {
  const r = [registry]
  return {
    deliveries: new Counter({
      name: 'pulsegate_webhook_deliveries_total',
      help:
        'webhook deliveries by kind and outcome: delivered, retried (an attempt failed, another is scheduled), ' +
        'dead_lettered, skipped_app_connected, withheld_consent, duplicate, dropped_queue_full, dropped_error, bad_payload',
      labelNames: ['kind', 'outcome'],
      registers: r,
    }),
    attempts: new Counter({
      name: 'pulsegate_webhook_attempts_total',
      help: 'HTTP attempts by result: ok, http_4xx, http_5xx, http_other (1xx/3xx: redirects are not followed), timeout, network',
      labelNames: ['result'],
      registers: r,
    }),
    latency: new Histogram({
      name: 'pulsegate_webhook_delivery_seconds',
      help: 'from the output being published (the alert committed) to the endpoint answering 2xx, retries included',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800],
      registers: r,
    }),
    queueDepth: new Gauge({
      name: 'pulsegate_webhook_queue_depth',
      help: 'deliveries held in memory by this node (due now or waiting for a retry)',
      registers: r,
    }),
    deadLetters: new Gauge({
      name: 'pulsegate_webhook_dead_letters',
      help: 'dead-lettered deliveries in the table (all nodes; read at every sweep)',
      registers: r,
    }),
  }
}

export type WebhookMetrics = ReturnType<typeof createWebhookMetrics>
