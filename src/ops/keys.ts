// Secret keys of the privacy operations (pseudonyms, people encryption): from the configuration, else from a key file
// under <data dir>/keys/ generated on first use. Never in the database: only a fingerprint (keyId) goes there, so a
// process holding another key is refused instead of silently deriving unlinkable ids (checkKeyIds).
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type { Queryable } from '../store/db.js'

export interface SecretKey {
  readonly bytes: Buffer
  /** fingerprint: HMAC-SHA256(key, 'pulsegate/key-id/v1'), first 8 bytes, hex; says nothing about the key */
  readonly id: string
  /** where it came from, for messages: the config field or the file path (never the key) */
  readonly origin: string
}

export class KeyError extends Error {}

export interface KeySpec {
  /** file name under <data dir>/keys/ */
  file: string
  /** the config field and variable, for messages */
  setting: string
  minBytes: number
  maxBytes: number
}

export function keyId(bytes: Buffer): string {
  return crypto.createHmac('sha256', bytes).update('pulsegate/key-id/v1').digest().subarray(0, 8).toString('hex')
}

/** Hex (an even number of hex digits) or base64/base64url text → bytes; the length is checked against the spec. */
export function parseKey(text: string, spec: KeySpec, origin: string): SecretKey {
  const s = text.trim()
  let bytes: Buffer
  if (/^(?:[0-9a-fA-F]{2})+$/.test(s)) bytes = Buffer.from(s, 'hex')
  else if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(s)) bytes = Buffer.from(s, 'base64')
  else throw new KeyError(`${origin}: the key must be hex or base64`)
  if (bytes.length < spec.minBytes || bytes.length > spec.maxBytes) {
    const want = spec.minBytes === spec.maxBytes ? `${spec.minBytes}` : `at least ${spec.minBytes}`
    throw new KeyError(`${origin}: the key must be ${want} bytes (hex or base64), it has ${bytes.length}`)
  }
  return { bytes, id: keyId(bytes), origin }
}

export function keyFile(dataDir: string, spec: KeySpec): string {
  return path.join(dataDir, 'keys', spec.file)
}

function readKeyFile(file: string, spec: KeySpec): SecretKey {
  // Like ssh with its private keys: a key file others can read is refused, not used.
  if (process.platform !== 'win32' && (fs.statSync(file).mode & 0o077) !== 0) {
    throw new KeyError(`${file} is accessible to group or others: chmod 600 it`)
  }
  return parseKey(fs.readFileSync(file, 'utf8'), spec, file)
}

/**
 * The configured key, else the key file, else (when `mayCreate`) a new key file of 32 random bytes, mode 0600 in a
 * 0700 directory. Two processes creating it at once agree: the file appears whole (link of a complete temp file) and
 * the one that loses reads the winner's.
 */
export function loadKey(configured: string | undefined, dataDir: string, spec: KeySpec, mayCreate = true): SecretKey {
  if (configured !== undefined) return parseKey(configured, spec, spec.setting)
  const file = keyFile(dataDir, spec)
  if (fs.existsSync(file)) return readKeyFile(file, spec)
  if (!mayCreate) {
    throw new KeyError(
      `no key: set ${spec.setting} or copy ${spec.file} into ${path.dirname(file)} from the data dir of the broker that set up this database`,
    )
  }
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
  const tmp = `${file}.${process.pid}.${crypto.randomBytes(4).toString('hex')}.tmp`
  const fd = fs.openSync(tmp, 'wx', 0o600)
  try {
    fs.writeSync(fd, `${crypto.randomBytes(32).toString('hex')}\n`)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
  try {
    fs.linkSync(tmp, file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
  } finally {
    fs.unlinkSync(tmp)
  }
  return readKeyFile(file, spec)
}

export type KeyPurpose = 'pseudonym' | 'people'

/** The key fingerprints this database was set up with (none before the first privacy operation). */
export async function registeredKeyIds(db: Queryable): Promise<Map<KeyPurpose, string>> {
  const res = await db.query<{ purpose: KeyPurpose; key_id: string }>('SELECT purpose, key_id FROM privacy_keys')
  return new Map(res.rows.map((r) => [r.purpose, r.key_id]))
}

/** Registers the keys' fingerprints on first use; refuses a key that is not the one the database was set up with. */
export async function checkKeyIds(db: Queryable, keys: Record<KeyPurpose, SecretKey>): Promise<void> {
  const purposes = Object.keys(keys) as KeyPurpose[]
  await db.query(
    `INSERT INTO privacy_keys (purpose, key_id) SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING`,
    [purposes, purposes.map((p) => keys[p].id)],
  )
  const stored = await registeredKeyIds(db)
  for (const p of purposes) {
    const want = stored.get(p)
    if (want !== keys[p].id) {
      throw new KeyError(
        `the ${p} key from ${keys[p].origin} (key id ${keys[p].id}) is not the one this database was set up with ` +
          `(key id ${want}): use the broker's key (its config or <data dir>/keys/)`,
      )
    }
  }
}
