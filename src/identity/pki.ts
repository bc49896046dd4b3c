// The dev PKI on disk (`<dataDir>/pki`): a CA, the server certificate, device certificates. The X.509 work itself is
// in x509.ts.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { randomBytes, X509Certificate as NodeX509Certificate } from 'node:crypto'
import { dirname, join } from 'node:path'
import {
  CA_VALID_DAYS,
  type CaMaterial,
  type CertValidityOptions,
  createCa,
  issueClientCert,
  issueServerCert,
  LEAF_VALID_DAYS,
  loadCa,
  type PkiKeyType,
  positiveDays,
} from './x509.js'

export type { CertValidityOptions, PkiKeyType } from './x509.js'

export interface PkiPaths {
  dir: string
  caCert: string
  caKey: string
  serverCert: string
  serverKey: string
  devicesDir: string
}

/** File layout under `<dataDir>/pki`. */
export function pkiPaths(dir: string): PkiPaths {
  return {
    dir,
    caCert: join(dir, 'ca.crt'),
    caKey: join(dir, 'ca.key'),
    serverCert: join(dir, 'server.crt'),
    serverKey: join(dir, 'server.key'),
    devicesDir: join(dir, 'devices'),
  }
}

export interface InitPkiOptions {
  serverHosts?: string[]
  /** Validity of the server cert (default 825). The CA lives 10 years, or longer if this is longer. */
  validDays?: number
  force?: boolean
  keyType?: PkiKeyType
}

export interface IssuedCert {
  deviceId: string
  certPem: string
  keyPem: string
  fingerprint256: string
  serialNumber: string
  certPath: string
  keyPath: string
  notAfter: Date
}

const DEVICE_ID_RE = /^[A-Za-z0-9_-]{1,64}$/
const CA_CN = 'pulsegate dev CA'

/** Throws unless deviceId matches [A-Za-z0-9_-]{1,64}. */
export function assertDeviceId(deviceId: string): void {
  if (typeof deviceId !== 'string' || !DEVICE_ID_RE.test(deviceId)) {
    throw new Error(
      `invalid device id ${JSON.stringify(deviceId)}: must match [A-Za-z0-9_-]{1,64} (it becomes a file name and the cert CN)`,
    )
  }
}

/** Fingerprint in Node's format (uppercase hex pairs joined by ':'), equal to getPeerCertificate().fingerprint256. */
export function fingerprint256(certPem: string): string {
  return new NodeX509Certificate(certPem).fingerprint256
}

/** True when CA and server cert/key are all present (what the broker needs to start mTLS). */
export function pkiExists(dir: string): boolean {
  const p = pkiPaths(dir)
  return [p.caCert, p.caKey, p.serverCert, p.serverKey].every((f) => existsSync(f))
}

/**
 * Creates CA + server cert if missing (idempotent unless force). Server cert SANs: DNS localhost,
 * IP 127.0.0.1, IP ::1 plus serverHosts. An existing server cert is kept as-is even if serverHosts
 * changed: pass force, or delete server.crt to have it reissued by the existing CA.
 * Returns true if it created anything.
 */
export async function initPki(dir: string, opts: InitPkiOptions = {}): Promise<boolean> {
  const p = pkiPaths(dir)
  const keyType = opts.keyType ?? 'ecdsa-p256'
  const serverDays = positiveDays(opts.validDays ?? LEAF_VALID_DAYS, 'validDays')
  ensureDir(dir)
  ensureDir(p.devicesDir)

  let created = false
  let ca: CaMaterial
  if (opts.force || !existsSync(p.caCert) || !existsSync(p.caKey)) {
    const fresh = await createCa(CA_CN, keyType, Math.max(CA_VALID_DAYS, serverDays))
    // Key first: a crash between the two writes must not leave a cert whose key is missing.
    writeFileAtomic(p.caKey, fresh.keyPem, 0o600)
    writeFileAtomic(p.caCert, fresh.certPem, 0o644)
    ca = await loadCa(fresh.certPem, fresh.keyPem)
    created = true
  } else {
    ca = await loadCa(readFileSync(p.caCert, 'utf8'), readFileSync(p.caKey, 'utf8'))
  }

  // A new CA invalidates the old server cert, so it is reissued along with it.
  if (created || !existsSync(p.serverCert) || !existsSync(p.serverKey)) {
    const server = await issueServerCert(ca, opts.serverHosts ?? [], keyType, serverDays)
    writeFileAtomic(p.serverKey, server.keyPem, 0o600)
    writeFileAtomic(p.serverCert, server.certPem, 0o644)
    created = true
  }
  return created
}

/**
 * Issues a client cert signed by the CA in `dir`: CN=<deviceId>, O=pulsegate device, SAN URI
 * urn:pulsegate:device:<deviceId>, EKU clientAuth. Writes devices/<id>.crt/.key, replacing any previous pair.
 * notAfter wins over validDays (default 825).
 */
export async function issueDeviceCert(
  dir: string,
  deviceId: string,
  opts: CertValidityOptions & { keyType?: PkiKeyType } = {},
): Promise<IssuedCert> {
  assertDeviceId(deviceId)
  const p = pkiPaths(dir)
  if (!existsSync(p.caCert) || !existsSync(p.caKey)) {
    throw new Error(`no CA in ${dir}: run initPki (pulsegate pki init) first`)
  }
  const ca = await loadCa(readFileSync(p.caCert, 'utf8'), readFileSync(p.caKey, 'utf8'))
  const leaf = await issueClientCert(ca, deviceId, opts, opts.keyType ?? 'ecdsa-p256')

  ensureDir(p.devicesDir)
  const certPath = join(p.devicesDir, `${deviceId}.crt`)
  const keyPath = join(p.devicesDir, `${deviceId}.key`)
  writeFileAtomic(keyPath, leaf.keyPem, 0o600)
  writeFileAtomic(certPath, leaf.certPem, 0o644)
  return {
    deviceId,
    certPem: leaf.certPem,
    keyPem: leaf.keyPem,
    fingerprint256: fingerprint256(leaf.certPem),
    serialNumber: leaf.cert.serialNumber,
    certPath,
    keyPath,
    notAfter: leaf.cert.notAfter,
  }
}

/** Same as issueDeviceCert but signed by a caller-supplied CA and not written to disk (foreign-CA and expiry tests). */
export async function issueCertWithCa(
  caCertPem: string,
  caKeyPem: string,
  deviceId: string,
  opts: { notBefore?: Date; notAfter?: Date } = {},
): Promise<{ certPem: string; keyPem: string; fingerprint256: string }> {
  assertDeviceId(deviceId)
  const ca = await loadCa(caCertPem, caKeyPem)
  const leaf = await issueClientCert(ca, deviceId, opts, 'ecdsa-p256')
  return { certPem: leaf.certPem, keyPem: leaf.keyPem, fingerprint256: fingerprint256(leaf.certPem) }
}

/** Generates a standalone CA that is not written to disk, for tests of foreign CAs. */
export async function generateCa(commonName: string): Promise<{ certPem: string; keyPem: string }> {
  return createCa(commonName, 'ecdsa-p256', CA_VALID_DAYS)
}

// ---------------------------------------------------------------------------------------------

function ensureDir(dir: string): void {
  if (existsSync(dir)) return
  mkdirSync(dirname(dir), { recursive: true })
  // The PKI dir holds the CA key; keep other local users out of it.
  mkdirSync(dir, { recursive: true, mode: 0o700 })
}

// Write-then-rename so a reader (or a crash) never sees a half-written key or cert; the temp file is
// created with the final mode so the key is never briefly world-readable.
function writeFileAtomic(path: string, data: string, mode: number): void {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`
  try {
    writeFileSync(tmp, data, { mode, flag: 'wx' })
    renameSync(tmp, path)
  } catch (err) {
    rmSync(tmp, { force: true })
    throw err
  }
}
