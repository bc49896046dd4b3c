// Metrics of the limits, one family per limit, on the broker's registry (src/metrics.ts stays as it is).
import { Counter, Gauge, type Registry } from 'prom-client'

export function createLimitMetrics(registry: Registry) {
  const registers = [registry]
  return {
    throttled: new Counter({
      name: 'pulsegate_limit_throttled_total',
      help: 'QoS 1/2 PUBLISH packets held back (socket not read) for lack of tokens, by role and bucket',
      labelNames: ['role', 'bucket'],
      registers,
    }),
    throttleQueue: new Gauge({
      name: 'pulsegate_limit_throttle_queue',
      help: 'PUBLISH packets waiting for tokens, all clients',
      registers,
    }),
    dropped: new Counter({
      name: 'pulsegate_limit_dropped_total',
      help: 'QoS 0 PUBLISH packets dropped over the rate limit, by role and bucket',
      labelNames: ['role', 'bucket'],
      registers,
    }),
    disconnects: new Counter({
      name: 'pulsegate_limit_disconnects_total',
      help: 'clients disconnected for staying far over their rate limit, by role',
      labelNames: ['role'],
      registers,
    }),
    connectRefusals: new Counter({
      name: 'pulsegate_limit_connect_refusals_total',
      help: 'CONNECTs refused by a connection limit, by reason (ip_connection_limit, flapping_ban)',
      labelNames: ['reason'],
      registers,
    }),
    flappingBans: new Counter({
      name: 'pulsegate_limit_flapping_bans_total',
      help: 'client id + address pairs banned for connecting too often',
      registers,
    }),
    bannedClients: new Gauge({
      name: 'pulsegate_limit_banned',
      help: 'client id + address pairs banned now',
      registers,
    }),
    outboundDropped: new Counter({
      name: 'pulsegate_outbound_dropped_total',
      help: 'QoS 0 deliveries held back from a client that is not reading (the newest per topic is sent on drain), by role',
      labelNames: ['role'],
      registers,
    }),
    outboundHeld: new Gauge({
      name: 'pulsegate_outbound_held',
      help: 'QoS 0 packets held back for slow clients now (one per client and topic)',
      registers,
    }),
    outboundCuts: new Counter({
      name: 'pulsegate_outbound_disconnects_total',
      help: 'clients disconnected because a QoS 1/2 delivery found too many bytes waiting for them, by role',
      labelNames: ['role'],
      registers,
    }),
    handshakesInProgress: new Gauge({
      name: 'pulsegate_tls_handshakes_in_progress',
      help: 'TLS handshakes in progress on the mTLS listener',
      registers,
    }),
    handshakesQueued: new Gauge({
      name: 'pulsegate_tls_handshakes_queued',
      help: 'TCP connections waiting (unread) for a TLS handshake slot',
      registers,
    }),
    handshakeWaits: new Counter({
      name: 'pulsegate_tls_handshake_waits_total',
      help: 'connections that had to wait for a TLS handshake slot',
      registers,
    }),
    handshakeOverflows: new Counter({
      name: 'pulsegate_tls_handshake_overflows_total',
      help: 'connections closed because the handshake queue was full',
      registers,
    }),
    handshakeExpired: new Counter({
      name: 'pulsegate_tls_handshake_expired_total',
      help: 'queued connections closed because they waited longer than limits.maxHandshakeWaitMs',
      registers,
    }),
    keepaliveTimeouts: new Counter({
      name: 'pulsegate_keepalive_timeouts_total',
      help: 'clients disconnected for silence beyond 1.5 × their keep-alive [MQTT-3.1.2-24]',
      registers,
    }),
  }
}

export type LimitMetrics = ReturnType<typeof createLimitMetrics>

/** Brownout (src/limits/brownout.ts): its own families, created once per broker beside the limits'. */
export function createBrownoutMetrics(registry: Registry) {
  const registers = [registry]
  return {
    state: new Gauge({
      name: 'pulsegate_brownout_active',
      help: 'load-adaptive edge throttling: 1 while in brownout (devices asked to batch longer), else 0',
      registers,
    }),
    transitions: new Counter({
      name: 'pulsegate_brownout_transitions_total',
      help: 'brownout state changes, by the state entered (brownout, normal)',
      labelNames: ['to'],
      registers,
    }),
    devices: new Gauge({
      name: 'pulsegate_brownout_devices_throttled',
      help: 'devices whose retained devices/{id}/config is the brownout one, published by this node',
      registers,
    }),
    configs: new Counter({
      name: 'pulsegate_brownout_configs_total',
      help: 'retained device configs published by the brownout, by kind (throttle, restore, skipped: changed by someone else meanwhile)',
      labelNames: ['kind'],
      registers,
    }),
    latency: new Gauge({
      name: 'pulsegate_brownout_commit_latency_seconds',
      help: 'the commit-latency signal at the last sample (mean enqueue→commit, or the oldest waiting batch if longer)',
      registers,
    }),
  }
}

export type BrownoutMetrics = ReturnType<typeof createBrownoutMetrics>
