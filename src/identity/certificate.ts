// Device identity from a verified client certificate: the SAN URI urn:pulsegate:device:<id> wins, else the CN.
import { isValidId } from '../topics/grammar.js'

/** tls.PeerCertificate, or the identity a TLS-terminating load balancer passed (src/transport/proxy-gate.ts) */
export interface CertNames {
  subject?: { CN?: string | string[] | undefined } | undefined
  subjectaltname?: string | undefined
}

const SAN_PREFIX = 'URI:urn:pulsegate:device:'

export function deviceIdFromCert(cert: CertNames): string | null {
  const san = cert.subjectaltname ?? ''
  for (const part of san.split(/,\s*/)) {
    if (part.startsWith(SAN_PREFIX)) {
      const id = part.slice(SAN_PREFIX.length)
      return isValidId(id) ? id : null
    }
  }
  const cn = cert.subject?.CN
  const id = Array.isArray(cn) ? cn[0] : cn
  return typeof id === 'string' && isValidId(id) ? id : null
}
