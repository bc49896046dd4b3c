// Device identity from a verified client certificate: the SAN URI urn:pulsegate:device:<id> wins, else the CN.
import type { PeerCertificate } from 'node:tls'
import { isValidId } from '../topics/grammar.js'

const SAN_PREFIX = 'URI:urn:pulsegate:device:'

export function deviceIdFromCert(cert: PeerCertificate): string | null {
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
