// CONNECT: who is this. A device by the certificate the TLS layer verified (checked against the registry; on the token
// TLS listener, where a certificate is optional, one that failed verification is refused here), a WebSocket
// client by the token verified at the upgrade, anyone else by the JWT in the password. The principal is kept for the
// later hooks; the client id must be the one the principal may use.
import { deviceIdFromCert } from '../identity/certificate.js'
import { clientIdAllowed, type Principal } from '../identity/principal.js'
import { TokenError, type Tokens } from '../identity/tokens.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { ErasureGuard } from '../ops/erasure-guard.js'
import type { CertificateRecord } from '../store/registry.js'
import { connInfo } from '../transport/connection.js'
import { assignedClientId, sentZeroLengthId } from './pre-connect.js'
import { type AuthenticateHook, authError, type Principals, refuse } from './types.js'

/** The registry's verdict on a device certificate (CertificateLookups: batched and briefly cached). */
export interface CertificateLookup {
  lookup(deviceId: string, fingerprint: string): Promise<CertificateRecord | null>
}

export interface AuthenticateDeps {
  lookups: { certificates: CertificateLookup; warmDevice?(deviceId: string): void }
  tokens: Pick<Tokens, 'verify'>
  principals: Principals
  metrics: Pick<Metrics, 'authRefusals' | 'connects'>
  log: Logger
  maxClientIdLength: number
  /** refuses the people being erased, and tokens issued before their erasure */
  erasure?: Pick<ErasureGuard, 'refusesConnect'>
}

export function createAuthenticate(deps: AuthenticateDeps): AuthenticateHook {
  const { lookups, tokens, principals, metrics, log, maxClientIdLength, erasure } = deps
  return (client, _username, password, done) => {
    const info = connInfo(client.conn)
    if (!info) {
      done(authError('unknown transport', 5), null)
      return
    }
    const { listener } = info
    void (async () => {
      let p: Principal
      // A presented certificate that failed verification is refused whatever else came with it (a valid token too):
      // it is either a misconfigured device or someone probing with a forged one.
      if (info.certRefused) return refuse(deps, listener, info.certRefused, 5, client.id, done)
      if (info.peerCert) {
        const deviceId = deviceIdFromCert(info.peerCert)
        if (!deviceId) return refuse(deps, listener, 'no_device_id_in_certificate', 5, client.id, done)
        // A resumed TLS session (tls-tickets.ts) skips the handshake's date checks: the certificate may have expired
        // since its full handshake.
        const until = info.peerCert.valid_to
        if (until !== undefined && Date.parse(until) <= Date.now()) {
          return refuse(deps, listener, 'certificate_expired', 5, client.id, done)
        }
        const fp = info.peerCert.fingerprint256
        // Batched with the other connects in flight and cached briefly (revocation bound: CertificateLookups).
        const rec = await lookups.certificates.lookup(deviceId, fp)
        if (!rec) return refuse(deps, listener, 'unknown_device', 5, client.id, done)
        if (rec.revoked || rec.fingerprintRevoked) return refuse(deps, listener, 'revoked', 5, client.id, done)
        if (rec.fingerprint !== fp) return refuse(deps, listener, 'fingerprint_mismatch', 5, client.id, done)
        p = { role: 'device', userId: rec.userId, deviceId, deviceKey: rec.deviceKey, events: [] }
        lookups.warmDevice?.(deviceId)
      } else if (info.upgradePrincipal) {
        p = info.upgradePrincipal
      } else if (password && password.length > 0) {
        try {
          p = await tokens.verify(password.toString('utf8'))
        } catch (err) {
          if (err instanceof TokenError) {
            return refuse(deps, listener, `token_${err.reason}`, err.reason === 'bad_role' ? 5 : 4, client.id, done)
          }
          throw err
        }
      } else {
        return refuse(deps, listener, 'no_credentials', 4, client.id, done)
      }
      // A zero-byte client id with CleanSession=1 (pre-connect.ts): the server assigns one [MQTT-3.1.3-6].
      if (sentZeroLengthId(client)) client.id = assignedClientId(p)
      if (!clientIdAllowed(p, client.id, maxClientIdLength)) {
        return refuse(deps, listener, 'bad_client_id', 2, client.id, done)
      }
      if (erasure?.refusesConnect(p)) return refuse(deps, listener, 'erased', 5, client.id, done)
      principals.set(client, p)
      metrics.connects.inc({ role: p.role, listener })
      done(null, true)
    })().catch((err: Error) => {
      // The registry is unreachable: "server unavailable", the client retries.
      log.warn({ err: err.message }, 'authentication failed for lack of the database')
      refuse(deps, listener, 'registry_unavailable', 3, client.id, done)
    })
  }
}
