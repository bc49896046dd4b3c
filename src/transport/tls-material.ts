// The server's TLS material: the configured files, else the development PKI in the data dir (created on first start).
import fs from 'node:fs'
import type { BrokerConfig } from '../../broker.config.js'
import { initPki, pkiExists, pkiPaths } from '../identity/pki.js'
import type { Logger } from '../log.js'
import type { TlsMaterial } from './listeners.js'

export function loadTls(config: BrokerConfig, log: Logger): Promise<TlsMaterial> | TlsMaterial {
  const { caFile, certFile, keyFile } = config.tls
  if (caFile && certFile && keyFile) {
    return { ca: fs.readFileSync(caFile), cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }
  }
  const dir = `${config.dataDir}/pki`
  const p = pkiPaths(dir)
  const read = () => ({
    ca: fs.readFileSync(p.caCert),
    cert: fs.readFileSync(p.serverCert),
    key: fs.readFileSync(p.serverKey),
  })
  if (pkiExists(dir)) return read()
  return initPki(dir).then(() => {
    log.warn(
      { dir },
      'no TLS material configured: created a development PKI. Issue a device certificate with `pulsegate pki device <deviceId> --user <userId>`',
    )
    return read()
  })
}
