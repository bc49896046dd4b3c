// What `pulsegate start` prints once it listens: where the console, metrics and PKI are, and the two commands that
// connect a first device and a first app. Plain text on stdout, apart from the JSON log lines.
import path from 'node:path'
import type { BrokerConfig } from '../../broker.config.js'
import { pkiPaths } from '../identity/pki.js'
import type { Pulsegate } from '../pulsegate.js'

export function startBanner(
  cfg: BrokerConfig,
  ports: Pulsegate['ports'],
  opts: { firstStart: boolean; store: string },
): string {
  const host = cfg.host === '0.0.0.0' || cfg.host === '::' ? 'localhost' : cfg.host
  const web = `${cfg.tls.wss ? 'https' : 'http'}://${host}:${ports.http}`
  const ws = `${cfg.tls.wss ? 'wss' : 'ws'}://${host}:${ports.http}/mqtt`
  const devPki = !(cfg.tls.caFile && cfg.tls.certFile && cfg.tls.keyFile)
  const pki = pkiPaths(path.join(cfg.dataDir, 'pki'))
  const ca = devPki ? pki.caCert : (cfg.tls.caFile as string)
  const lines = [
    `pulsegate is running (store: ${opts.store}${opts.firstStart ? '; first start: development PKI created' : ''})`,
    `  console      ${web}/            race control (sign in with a medic or admin token)`,
    `  metrics      ${web}/metrics     health ${web}/healthz, readiness ${web}/readyz`,
    `  MQTT         ${ports.mqtt !== null ? `mqtt://${host}:${ports.mqtt} (JWT)` : 'off'}` +
      `   MQTT/TLS ${ports.mqtts !== null ? `mqtts://${host}:${ports.mqtts} (device certificate)` : 'off'}` +
      (ports.mqttsToken !== null ? `   MQTT/TLS mqtts://${host}:${ports.mqttsToken} (JWT, certificate optional)` : '') +
      `   WebSocket ${ws} (JWT)`,
    devPki
      ? `  PKI          ${path.dirname(pki.caCert)} (CA ${path.basename(pki.caCert)}; device certificates in devices/)`
      : `  PKI          CA ${ca} (tls.caFile)`,
    '  connect a device:',
    '    pulsegate pki device tracker-1 --user alice',
    ...(ports.mqtts !== null
      ? [
          `    mosquitto_pub -h ${host} -p ${ports.mqtts} --cafile ${ca} --cert ${path.join(path.dirname(pki.caCert), 'devices', 'tracker-1.crt')} --key ${path.join(path.dirname(pki.caCert), 'devices', 'tracker-1.key')} -i tracker-1 -q 1 -t devices/tracker-1/readings -m '{"seq":1,"samples":[{"t":'$(date +%s000)',"hr":72}]}'`,
        ]
      : []),
    '  connect an app:',
    `    pulsegate token alice --role app    then MQTT over ${ws}, client id app:alice:phone, the token as password`,
    '  contract: docs/contract.md, docs/asyncapi.yaml (pulsegate contract asyncapi)',
  ]
  return lines.join('\n')
}
