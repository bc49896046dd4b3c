// X.509 machinery of the dev PKI: key pairs, a CA, client and server leaves (@peculiar/x509 on Node's WebCrypto).
// Kept apart from pki.ts, which owns the file layout and what gets written where.
import { createPrivateKey, createPublicKey, type KeyObject, randomBytes, webcrypto } from 'node:crypto'
import { isIP } from 'node:net'
import { createRequire } from 'node:module'
import type * as X509 from '@peculiar/x509'

// @peculiar/x509 2.x loads tsyringe, which throws at import time unless a Reflect metadata polyfill
// (reflect-metadata, core-js) is present, and none is a dependency here. tsyringe only reads
// constructor-parameter metadata while x509's classes are decorated, and x509's build emits none,
// so stubs answering "no metadata" behave identically. They exist only for the synchronous require
// and are removed afterwards so no other library mistakes them for a real polyfill.
function loadX509(): typeof X509 {
  const reflect = Reflect as unknown as Record<string, unknown>
  const stubs: Record<string, () => undefined> = {
    getMetadata: () => undefined,
    getOwnMetadata: () => undefined,
    defineMetadata: () => undefined,
  }
  const added = Object.keys(stubs).filter((k) => typeof reflect[k] !== 'function')
  for (const k of added) reflect[k] = stubs[k]
  try {
    return createRequire(import.meta.url)('@peculiar/x509') as typeof X509
  } finally {
    for (const k of added) delete reflect[k]
  }
}

const x509 = loadX509()
// Pin Node's WebCrypto (globalThis.crypto === node:crypto webcrypto) rather than rely on x509's
// environment sniffing or on whatever another import registered on its shared singleton.
x509.cryptoProvider.set(globalThis.crypto)

const subtle = webcrypto.subtle

type SignAlgorithm = webcrypto.Algorithm | webcrypto.EcdsaParams

export type PkiKeyType = 'ecdsa-p256' | 'rsa-2048'

export interface CertValidityOptions {
  validDays?: number
  notBefore?: Date
  notAfter?: Date
}

const DAY_MS = 86_400_000
// Backdating absorbs clock skew between the machine issuing the cert and the devices/broker checking it.
const CLOCK_SKEW_MS = 5 * 60_000
export const CA_VALID_DAYS = 3650
export const LEAF_VALID_DAYS = 825
const DEVICE_O = 'pulsegate device'

export interface CaMaterial {
  cert: X509.X509Certificate
  signingKey: webcrypto.CryptoKey
  signingAlgorithm: SignAlgorithm
  authorityKeyId: X509.AuthorityKeyIdentifierExtension
}

export interface LeafMaterial {
  cert: X509.X509Certificate
  certPem: string
  keyPem: string
}

type KeyAlgorithmParams = webcrypto.RsaHashedKeyGenParams | webcrypto.EcKeyGenParams

function keyGenParams(keyType: PkiKeyType): KeyAlgorithmParams {
  return keyType === 'rsa-2048'
    ? { name: 'RSASSA-PKCS1-v1_5', modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: 'SHA-256' }
    : { name: 'ECDSA', namedCurve: 'P-256' }
}

function signingAlgorithmFor(alg: KeyAlgorithmParams): SignAlgorithm {
  return { name: alg.name, hash: 'SHA-256' }
}

async function generateKeyPair(keyType: PkiKeyType): Promise<webcrypto.CryptoKeyPair> {
  // Extractable so the private key can be written out as PKCS#8.
  return (await subtle.generateKey(keyGenParams(keyType), true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair
}

async function privateKeyPem(key: webcrypto.CryptoKey): Promise<string> {
  const der = await subtle.exportKey('pkcs8', key)
  return x509.PemConverter.encode(der, 'PRIVATE KEY')
}

// Serials must be positive and unique per CA; a clear top bit keeps the DER INTEGER positive,
// and a non-zero first byte keeps the 16-byte encoding minimal (strict DER parsers reject padding).
function randomSerial(): string {
  const bytes = randomBytes(16)
  bytes[0] = ((bytes[0] ?? 0) & 0x7f) | 0x01
  return bytes.toString('hex')
}

export function positiveDays(days: number, name: string): number {
  if (!Number.isFinite(days) || days <= 0) throw new Error(`${name} must be a positive number of days, got ${days}`)
  return days
}

function validity(opts: CertValidityOptions, defaultDays: number): { notBefore: Date; notAfter: Date } {
  const now = Date.now()
  const notAfter = opts.notAfter ?? new Date(now + positiveDays(opts.validDays ?? defaultDays, 'validDays') * DAY_MS)
  // An explicit past notAfter (expired test certs) still needs notBefore < notAfter to be a well-formed cert.
  const notBefore = opts.notBefore ?? new Date(Math.min(now - CLOCK_SKEW_MS, notAfter.getTime() - DAY_MS))
  if (notBefore.getTime() >= notAfter.getTime()) {
    throw new Error(`notBefore (${notBefore.toISOString()}) must be before notAfter (${notAfter.toISOString()})`)
  }
  return { notBefore, notAfter }
}

export async function createCa(
  commonName: string,
  keyType: PkiKeyType,
  validDays: number,
): Promise<{ certPem: string; keyPem: string }> {
  const alg = keyGenParams(keyType)
  const keys = await generateKeyPair(keyType)
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [commonName] }],
    ...validity({ validDays }, CA_VALID_DAYS),
    keys,
    signingAlgorithm: signingAlgorithmFor(alg),
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  })
  return { certPem: cert.toString('pem'), keyPem: await privateKeyPem(keys.privateKey) }
}

// WebCrypto cannot sniff a PKCS#8 key's algorithm, so Node's KeyObject tells us which import params to use.
function caKeyParams(key: KeyObject): {
  importAlg: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams
  sign: SignAlgorithm
} {
  if (key.asymmetricKeyType === 'rsa') {
    return {
      importAlg: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
      sign: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
    }
  }
  const curve = key.asymmetricKeyDetails?.namedCurve ?? ''
  // Hash strength matched to the curve, as OpenSSL and browsers expect.
  const ec: Record<string, [string, string]> = {
    prime256v1: ['P-256', 'SHA-256'],
    secp384r1: ['P-384', 'SHA-384'],
    secp521r1: ['P-521', 'SHA-512'],
  }
  const match = key.asymmetricKeyType === 'ec' ? ec[curve] : undefined
  if (!match) throw new Error(`unsupported CA key type: ${key.asymmetricKeyType} ${curve}`.trimEnd())
  return { importAlg: { name: 'ECDSA', namedCurve: match[0] }, sign: { name: 'ECDSA', hash: match[1] } }
}

// Parsing the CA with asn1js and OpenSSL dominates issuance time (~3/4 of it), so recently used CAs are
// kept, keyed by the PEM text itself: rewriting ca.crt/ca.key (initPki force) naturally misses the cache.
const CA_CACHE_MAX = 8
const caCache = new Map<string, Promise<CaMaterial>>()

export function loadCa(caCertPem: string, caKeyPem: string): Promise<CaMaterial> {
  const cacheKey = `${caCertPem}\0${caKeyPem}`
  let ca = caCache.get(cacheKey)
  if (!ca) {
    ca = parseCa(caCertPem, caKeyPem)
    caCache.set(cacheKey, ca)
    ca.catch(() => caCache.delete(cacheKey))
    if (caCache.size > CA_CACHE_MAX) caCache.delete(caCache.keys().next().value as string)
  }
  return ca
}

async function parseCa(caCertPem: string, caKeyPem: string): Promise<CaMaterial> {
  // PEM decoding in OpenSSL 3 is slow (it probes every decoder), so the key is parsed exactly once.
  const key = createPrivateKey(caKeyPem)
  const cert = new x509.X509Certificate(caCertPem)
  // Catches a ca.crt/ca.key pair that got out of sync before we mint certs nobody can verify.
  const keySpki = createPublicKey(key).export({ type: 'spki', format: 'der' })
  if (!keySpki.equals(new Uint8Array(cert.publicKey.rawData))) {
    throw new Error('CA private key does not match the CA certificate')
  }
  const { importAlg, sign } = caKeyParams(key)
  const pkcs8 = key.export({ type: 'pkcs8', format: 'der' })
  const signingKey = await subtle.importKey('pkcs8', pkcs8, importAlg, false, ['sign'])
  return { cert, signingKey, signingAlgorithm: sign, authorityKeyId: await authorityKeyId(cert) }
}

async function authorityKeyId(ca: X509.X509Certificate): Promise<X509.AuthorityKeyIdentifierExtension> {
  // Reuse the CA's own SKI when present so AKI matches byte-for-byte (OpenSSL chain building compares them).
  const ski = ca.getExtension(x509.SubjectKeyIdentifierExtension)
  if (ski) return new x509.AuthorityKeyIdentifierExtension(ski.keyId)
  return x509.AuthorityKeyIdentifierExtension.create(ca.publicKey)
}

async function signLeaf(
  ca: CaMaterial,
  keyType: PkiKeyType,
  subject: X509.JsonName,
  window: { notBefore: Date; notAfter: Date },
  extensions: X509.Extension[],
): Promise<LeafMaterial> {
  const keys = await generateKeyPair(keyType)
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject,
    issuer: ca.cert.subjectName,
    ...window,
    publicKey: keys.publicKey,
    signingKey: ca.signingKey,
    signingAlgorithm: ca.signingAlgorithm,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      ...extensions,
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ca.authorityKeyId,
    ],
  })
  return { cert, certPem: cert.toString('pem'), keyPem: await privateKeyPem(keys.privateKey) }
}

function leafKeyUsage(keyType: PkiKeyType): X509.KeyUsagesExtension {
  // RSA key exchange (TLS 1.2 non-ECDHE suites) needs keyEncipherment; ECDSA keys only ever sign.
  const flags =
    keyType === 'rsa-2048'
      ? x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment
      : x509.KeyUsageFlags.digitalSignature
  return new x509.KeyUsagesExtension(flags, true)
}

export async function issueClientCert(
  ca: CaMaterial,
  deviceId: string,
  opts: CertValidityOptions,
  keyType: PkiKeyType,
): Promise<LeafMaterial> {
  return signLeaf(ca, keyType, [{ CN: [deviceId] }, { O: [DEVICE_O] }], validity(opts, LEAF_VALID_DAYS), [
    leafKeyUsage(keyType),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
    new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `urn:pulsegate:device:${deviceId}` }]),
  ])
}

export async function issueServerCert(
  ca: CaMaterial,
  serverHosts: string[],
  keyType: PkiKeyType,
  validDays: number,
): Promise<LeafMaterial> {
  const hosts = ['localhost', '127.0.0.1', '::1', ...serverHosts.map((h) => h.trim()).filter((h) => h.length > 0)]
  const names: X509.JsonGeneralName[] = []
  const seen = new Set<string>()
  for (const host of hosts) {
    const key = host.toLowerCase()
    if (seen.has(key)) continue
    seen.add(key)
    names.push({ type: isIP(host) ? 'ip' : 'dns', value: host })
  }
  const cn = serverHosts.find((h) => h.trim() && !isIP(h.trim()))?.trim() ?? 'localhost'
  return signLeaf(ca, keyType, [{ CN: [cn] }, { O: ['pulsegate'] }], validity({ validDays }, LEAF_VALID_DAYS), [
    leafKeyUsage(keyType),
    new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
    new x509.SubjectAlternativeNameExtension(names),
  ])
}
