// Prometheus metrics. One registry per broker instance so tests can run several brokers in one process.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

export function createMetrics() {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: 20 })
  const r = [registry]
  return {
    registry,
    connections: new Gauge({
      name: 'pulsegate_connections',
      help: 'connected MQTT clients by role',
      labelNames: ['role'],
      registers: r,
    }),
    connects: new Counter({
      name: 'pulsegate_connects_total',
      help: 'accepted MQTT connections by role and listener',
      labelNames: ['role', 'listener'],
      registers: r,
    }),
    authRefusals: new Counter({
      name: 'pulsegate_auth_refusals_total',
      help: 'refused connections by reason',
      labelNames: ['reason', 'listener'],
      registers: r,
    }),
    tlsHandshakes: new Counter({
      name: 'pulsegate_tls_handshakes_total',
      help: 'completed TLS handshakes by listener and kind: full, or resumed from a session ticket',
      labelNames: ['listener', 'kind'],
      registers: r,
    }),
    aclRefusals: new Counter({
      name: 'pulsegate_acl_refusals_total',
      help: 'refused publish/subscribe by action and role',
      labelNames: ['action', 'role'],
      registers: r,
    }),
    packetsIn: new Counter({
      name: 'pulsegate_publish_in_total',
      help: 'PUBLISH packets received from clients by QoS',
      labelNames: ['qos'],
      registers: r,
    }),
    packetsOut: new Counter({
      name: 'pulsegate_publish_out_total',
      help: 'PUBLISH packets delivered to clients',
      registers: r,
    }),
    guardCuts: new Counter({
      name: 'pulsegate_packet_guard_cuts_total',
      help: 'connections cut by the packet guard',
      labelNames: ['reason', 'listener'],
      registers: r,
    }),
    clientErrors: new Counter({
      name: 'pulsegate_client_errors_total',
      help: 'client/connection errors',
      labelNames: ['kind'],
      registers: r,
    }),
    // Ingest, in the shape of EMQX sink metrics: received = accepted + rejected; committed + duplicates = accepted samples written.
    batchesReceived: new Counter({
      name: 'pulsegate_ingest_batches_total',
      help: 'readings batches received by QoS',
      labelNames: ['qos'],
      registers: r,
    }),
    samplesReceived: new Counter({
      name: 'pulsegate_ingest_samples_received_total',
      help: 'samples received (per metric value)',
      registers: r,
    }),
    samplesAccepted: new Counter({
      name: 'pulsegate_ingest_samples_accepted_total',
      help: 'samples that passed validation',
      registers: r,
    }),
    samplesRejected: new Counter({
      name: 'pulsegate_ingest_samples_rejected_total',
      help: 'samples refused, by reason',
      labelNames: ['reason'],
      registers: r,
    }),
    duplicates: new Counter({
      name: 'pulsegate_ingest_duplicates_total',
      help: 'samples already stored (redelivery, re-upload, second path)',
      labelNames: ['where'],
      registers: r,
    }),
    rowsCommitted: new Counter({
      name: 'pulsegate_ingest_rows_committed_total',
      help: 'rows inserted by the group-commit writer',
      labelNames: ['table'],
      registers: r,
    }),
    commitLatency: new Histogram({
      name: 'pulsegate_ingest_commit_seconds',
      help: 'time from enqueue to commit of a batch',
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
    statementLatency: new Histogram({
      name: 'pulsegate_ingest_statement_seconds',
      help: 'duration of one group-commit statement',
      buckets: [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: r,
    }),
    flushRows: new Histogram({
      name: 'pulsegate_ingest_flush_rows',
      help: 'rows per flush',
      buckets: [1, 10, 100, 500, 1000, 5000, 20000],
      registers: r,
    }),
    // The admission gate in front of the database connections (src/store/lanes.ts): per lane, not per pool.
    dbQueueDepth: new Gauge({
      name: 'pulsegate_db_queue_depth',
      help: 'statements/transactions waiting in a database lane for a connection',
      labelNames: ['lane'],
      registers: r,
    }),
    dbQueueWait: new Histogram({
      name: 'pulsegate_db_queue_wait_seconds',
      help: 'time a statement/transaction waited in its database lane before it was admitted',
      labelNames: ['lane'],
      buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: r,
    }),
    dbQueueRejected: new Counter({
      name: 'pulsegate_db_queue_rejected_total',
      help: 'statements/transactions refused by a database lane: queue_full or wait_timeout',
      labelNames: ['lane', 'reason'],
      registers: r,
    }),
    queueDepth: new Gauge({ name: 'pulsegate_ingest_queue_rows', help: 'rows waiting for the database', registers: r }),
    inflight: new Gauge({ name: 'pulsegate_ingest_inflight_statements', help: 'statements in flight', registers: r }),
    dropped: new Counter({
      name: 'pulsegate_ingest_dropped_total',
      help: 'QoS 0 batches dropped under overload',
      labelNames: ['reason'],
      registers: r,
    }),
    refused: new Counter({
      name: 'pulsegate_ingest_refused_total',
      help: 'QoS 1 batches refused unacked (device retries)',
      labelNames: ['reason'],
      registers: r,
    }),
    envelopes: new Counter({
      name: 'pulsegate_ingest_envelopes_total',
      help: 'readings batches by envelope (plain, signed, encrypted) and result (accepted or the refusal reason)',
      labelNames: ['kind', 'result'],
      registers: r,
    }),
    deadLettered: new Counter({
      name: 'pulsegate_ingest_dead_lettered_total',
      help: 'malformed batches written to the dead-letter table',
      labelNames: ['reason'],
      registers: r,
    }),
    conflictRetries: new Counter({
      name: 'pulsegate_ingest_conflict_retries_total',
      help: 'plain INSERTs that met an already stored sample and were re-run with ON CONFLICT DO NOTHING',
      registers: r,
    }),
    writeErrors: new Counter({
      name: 'pulsegate_ingest_write_errors_total',
      help: 'failed statements (retried)',
      registers: r,
    }),
    alertsOpened: new Counter({
      name: 'pulsegate_alerts_opened_total',
      help: 'alert episodes opened, by kind',
      labelNames: ['kind'],
      registers: r,
    }),
    alertsResolved: new Counter({
      name: 'pulsegate_alerts_resolved_total',
      help: 'alert episodes resolved, by kind',
      labelNames: ['kind'],
      registers: r,
    }),
    outputsWithheld: new Counter({
      name: 'pulsegate_outputs_withheld_total',
      help: 'messages not published to others, by output and reason (consent, privacy zone)',
      labelNames: ['output', 'reason'],
      registers: r,
    }),
    leaderboardPublishSeconds: new Histogram({
      name: 'pulsegate_leaderboard_publish_seconds',
      help: 'time to build and publish one event leaderboard',
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
      registers: r,
    }),
    leaderboardBytes: new Histogram({
      name: 'pulsegate_leaderboard_bytes',
      help: 'leaderboard message size',
      buckets: [256, 1024, 4096, 16384, 65536],
      registers: r,
    }),
    liveSnapshots: new Counter({
      name: 'pulsegate_live_snapshots_total',
      help: 'live snapshots published',
      registers: r,
    }),
    syncRequests: new Counter({
      name: 'pulsegate_sync_requests_total',
      help: 'delta sync requests by outcome',
      labelNames: ['outcome'],
      registers: r,
    }),
    dpReleases: new Counter({
      name: 'pulsegate_dp_releases_total',
      help: 'differentially private statistics releases, by series (broker, operator)',
      labelNames: ['series'],
      registers: r,
    }),
    dpEpsilonSpent: new Gauge({
      name: 'pulsegate_dp_epsilon_spent',
      help: "privacy budget spent today per event (ε), as of this process's last release attempt",
      labelNames: ['event'],
      registers: r,
    }),
    dpBudgetRefusals: new Counter({
      name: 'pulsegate_dp_budget_refusals_total',
      help: 'releases refused because the day’s privacy budget of the event was spent',
      labelNames: ['series'],
      registers: r,
    }),
    dpReleaseSeconds: new Histogram({
      name: 'pulsegate_dp_release_seconds',
      help: 'time to compute, record and publish one event statistics release',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: r,
    }),
    dpFailures: new Counter({
      name: 'pulsegate_dp_failures_total',
      help: 'statistics rounds that failed (database errors); retried at the next interval',
      registers: r,
    }),
  }
}

export type Metrics = ReturnType<typeof createMetrics>
