// Opens the configured MQTT listeners and then the HTTP one, in that order, on the configured ports (0: the OS picks).
// The servers opened are pushed to `servers` as they open, so a caller whose later listener fails can close them.
import type http from 'node:http'
import type net from 'node:net'
import type { BrokerConfig } from '../../broker.config.js'
import { capHandshakes } from '../limits/index.js'
import type { LimitMetrics } from '../limits/metrics.js'
import type { Logger } from '../log.js'
import { createTcpServer, createTlsServer, listen, type TlsMaterial, type TransportDeps } from './listeners.js'

export interface ListenerPorts {
  mqtt: number | null
  mqtts: number | null
  /** MQTT/TLS with the client certificate optional (token clients), when mqttsTokenEnabled */
  mqttsToken: number | null
  http: number
}

export async function startListeners(
  config: BrokerConfig,
  deps: TransportDeps,
  o: { tls: TlsMaterial | null; http: http.Server; limits: LimitMetrics; log: Logger; servers: net.Server[] },
): Promise<ListenerPorts> {
  const ports: ListenerPorts = { mqtt: null, mqtts: null, mqttsToken: null, http: 0 }
  // the variable named when a port is in use (PortInUseError)
  const open = async (s: net.Server, port: number, variable: string) => {
    o.servers.push(s)
    return listen(s, port, config.host, variable)
  }
  if (config.mqttEnabled) ports.mqtt = await open(createTcpServer(deps), config.mqttPort, 'PULSEGATE_MQTT_PORT')
  const tlsListeners = [
    {
      on: config.mqttsEnabled,
      port: config.mqttsPort,
      clientCert: 'required',
      key: 'mqtts',
      env: 'PULSEGATE_MQTTS_PORT',
    },
    {
      on: config.mqttsTokenEnabled,
      port: config.mqttsTokenPort,
      clientCert: 'optional',
      key: 'mqttsToken',
      env: 'PULSEGATE_MQTTS_TOKEN_PORT',
    },
  ] as const
  for (const l of tlsListeners) {
    if (!l.on || !o.tls) continue
    const s = createTlsServer(deps, o.tls, config.tls, l.clientCert)
    // Each TLS listener has its own cap: a handshake storm on one does not starve the other.
    capHandshakes(s, {
      max: config.limits.maxTlsHandshakes,
      maxQueued: config.limits.maxQueuedHandshakes,
      maxWaitMs: config.limits.maxHandshakeWaitMs,
      metrics: o.limits,
      log: o.log,
    })
    ports[l.key] = await open(s, l.port, l.env)
  }
  ports.http = await open(o.http, config.httpPort, 'PULSEGATE_HTTP_PORT')
  return ports
}
