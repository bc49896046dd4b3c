// The Ed25519 key that signs audit checkpoints lives in a file, never in the database: whoever can rewrite the
// database cannot forge a checkpoint. Verification trusts only public keys read from files.
import crypto, { type KeyObject } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type { BrokerConfig } from '../../broker.config.js'

export interface AuditSigner {
  privateKey: KeyObject
  publicKey: KeyObject
  keyId: string
}

export interface AuditKeyPaths {
  privateKey: string
  /** the public half, written beside a generated key (and read by verify when the private key is absent) */
  publicKey: string
  /** public keys of retired signing keys (*.pem): their old checkpoints keep verifying after a key change */
  retiredDir: string
}

export function auditKeyPaths(config: Pick<BrokerConfig, 'dataDir' | 'privacy'>): AuditKeyPaths {
  const keysDir = path.join(config.dataDir, 'keys')
  const privateKey = config.privacy.auditKeyFile ?? path.join(keysDir, 'audit-ed25519.pem')
  return {
    privateKey,
    publicKey: privateKey.replace(/(\.pem)?$/, '.pub.pem'),
    retiredDir: path.join(keysDir, 'audit-retired'),
  }
}

/** hex SHA-256 of the public key's SPKI DER: names the key in checkpoints */
export function keyIdOf(publicKey: KeyObject): string {
  return crypto
    .createHash('sha256')
    .update(publicKey.export({ type: 'spki', format: 'der' }))
    .digest('hex')
}

function readKey(file: string, kind: 'private' | 'public'): KeyObject {
  const pem = fs.readFileSync(file, 'utf8')
  let key: KeyObject
  try {
    key = kind === 'private' ? crypto.createPrivateKey(pem) : crypto.createPublicKey(pem)
  } catch (err) {
    throw new Error(`${file}: not a PEM ${kind} key (${(err as Error).message})`)
  }
  if (key.asymmetricKeyType !== 'ed25519')
    throw new Error(`${file}: an Ed25519 key is needed, not ${key.asymmetricKeyType}`)
  return key
}

/**
 * The signing key: the configured file (which must exist), or the default file, generated on first use (0600, with
 * its public half beside it). Two processes generating at once: `wx` lets one win and the other reads its key.
 */
export function loadSigner(config: Pick<BrokerConfig, 'dataDir' | 'privacy'>): AuditSigner {
  const p = auditKeyPaths(config)
  if (!fs.existsSync(p.privateKey)) {
    if (config.privacy.auditKeyFile)
      throw new Error(`privacy.auditKeyFile ${p.privateKey} does not exist (PULSEGATE_AUDIT_KEY_FILE)`)
    fs.mkdirSync(path.dirname(p.privateKey), { recursive: true, mode: 0o700 })
    const pair = crypto.generateKeyPairSync('ed25519')
    try {
      fs.writeFileSync(p.privateKey, pair.privateKey.export({ type: 'pkcs8', format: 'pem' }), {
        mode: 0o600,
        flag: 'wx',
      })
      fs.writeFileSync(p.publicKey, pair.publicKey.export({ type: 'spki', format: 'pem' }), { mode: 0o644 })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
    }
  }
  const privateKey = readKey(p.privateKey, 'private')
  const publicKey = crypto.createPublicKey(privateKey)
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) }
}

/** Public keys whose checkpoints verify accepts, by key id: the signing key's, the one beside it, retired ones. */
export function trustedKeys(config: Pick<BrokerConfig, 'dataDir' | 'privacy'>): Map<string, KeyObject> {
  const p = auditKeyPaths(config)
  const keys: KeyObject[] = []
  if (fs.existsSync(p.privateKey)) keys.push(crypto.createPublicKey(readKey(p.privateKey, 'private')))
  if (fs.existsSync(p.publicKey)) keys.push(readKey(p.publicKey, 'public'))
  if (fs.existsSync(p.retiredDir)) {
    for (const f of fs.readdirSync(p.retiredDir).sort())
      if (f.endsWith('.pem')) keys.push(readKey(path.join(p.retiredDir, f), 'public'))
  }
  return new Map(keys.map((k) => [keyIdOf(k), k]))
}
