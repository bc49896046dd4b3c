// Names and e-mails: kept only in `people`, only as AES-256-GCM ciphertext under a key outside the database. Every
// other table, topic, audit row and log line carries the pseudonymous user id alone.
//
// A value is stored as  0x01 ‖ key id (8 bytes) ‖ nonce (12 random bytes) ‖ ciphertext ‖ tag (16 bytes).
// The associated data binds it to its person and field: 'pulsegate/people/v1\0' ‖ field ‖ '\0' ‖ user id ‖ header,
// so a ciphertext copied to another person's row (or from the name to the e-mail column) fails to decrypt, and the key
// id names the key it needs (key rotation, or a process holding the wrong key, is reported, not garbled).
import crypto from 'node:crypto'
import type { BrokerConfig } from '../../broker.config.js'
import type { Queryable } from '../store/db.js'
import { type KeySpec, loadKey, type SecretKey } from './keys.js'

export const PEOPLE_KEY: KeySpec = {
  file: 'people.key',
  setting: 'privacy.peopleKey (PULSEGATE_PEOPLE_KEY)',
  minBytes: 32,
  maxBytes: 32,
}

export type PeopleField = 'name' | 'email'

const FORMAT = 1
const HEADER = 1 + 8
const NONCE = 12
const TAG = 16
/** Longest name or e-mail accepted (characters). */
export const PEOPLE_VALUE_MAX = 320

export class PeopleError extends Error {}

export function loadPeopleKey(config: Pick<BrokerConfig, 'dataDir' | 'privacy'>, mayCreate = true): SecretKey {
  return loadKey(config.privacy.peopleKey, config.dataDir, PEOPLE_KEY, mayCreate)
}

function aad(userId: string, field: PeopleField, header: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`pulsegate/people/v1\u0000${field}\u0000${userId}`, 'utf8'), header])
}

export function encryptField(key: SecretKey, userId: string, field: PeopleField, plaintext: string): Buffer {
  const header = Buffer.concat([Buffer.of(FORMAT), Buffer.from(key.id, 'hex')])
  const nonce = crypto.randomBytes(NONCE)
  const cipher = crypto.createCipheriv('aes-256-gcm', key.bytes, nonce, { authTagLength: TAG })
  cipher.setAAD(aad(userId, field, header))
  const body = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()])
  return Buffer.concat([header, nonce, body, cipher.getAuthTag()])
}

export function decryptField(key: SecretKey, userId: string, field: PeopleField, blob: Uint8Array): string {
  const b = Buffer.from(blob)
  if (b.length < HEADER + NONCE + TAG || b[0] !== FORMAT) throw new PeopleError(`${field} of ${userId}: not a value`)
  const id = b.subarray(1, HEADER).toString('hex')
  if (id !== key.id) throw new PeopleError(`${field} of ${userId} is encrypted under key ${id}, not ${key.id}`)
  const decipher = crypto.createDecipheriv('aes-256-gcm', key.bytes, b.subarray(HEADER, HEADER + NONCE), {
    authTagLength: TAG,
  })
  decipher.setAAD(aad(userId, field, b.subarray(0, HEADER)))
  decipher.setAuthTag(b.subarray(b.length - TAG))
  try {
    return Buffer.concat([decipher.update(b.subarray(HEADER + NONCE, b.length - TAG)), decipher.final()]).toString(
      'utf8',
    )
  } catch {
    throw new PeopleError(`${field} of ${userId} does not authenticate (tampered, or moved from another row)`)
  }
}

export interface PersonFields {
  /** undefined: keep as stored; null: clear */
  name?: string | null
  email?: string | null
}

export interface Person {
  userId: string
  name: string | null
  email: string | null
}

function checkValue(field: PeopleField, v: string | null | undefined): void {
  if (v === undefined || v === null) return
  // Never quote the value: messages reach logs.
  if (v.length === 0 || v.length > PEOPLE_VALUE_MAX)
    throw new PeopleError(`${field} must be 1–${PEOPLE_VALUE_MAX} characters`)
}

/** IANA time zone → its canonical name (Intl's), or a PeopleError. Offsets such as '+01:00' are not zones. */
export function normalizeTimeZone(tz: string): string {
  if (/^[+-]/.test(tz)) throw new PeopleError(`time zone ${JSON.stringify(tz)} is an offset, not an IANA zone`)
  try {
    return new Intl.DateTimeFormat('en-US', { timeZone: tz }).resolvedOptions().timeZone
  } catch {
    throw new PeopleError(`unknown time zone ${JSON.stringify(tz)} (use an IANA name such as Europe/Berlin)`)
  }
}

export class PeopleStore {
  constructor(
    private readonly db: Queryable,
    private readonly key: SecretKey,
  ) {}

  /** Sets the fields given (user must exist); returns false when nothing was given. */
  async upsert(userId: string, fields: PersonFields): Promise<boolean> {
    checkValue('name', fields.name)
    checkValue('email', fields.email)
    if (fields.name === undefined && fields.email === undefined) return false
    const enc = (field: PeopleField, v: string | null | undefined) =>
      v === undefined || v === null ? null : encryptField(this.key, userId, field, v)
    await this.db.query(
      `INSERT INTO people (user_id, name_enc, email_enc) VALUES ($1, $2, $3)
       ON CONFLICT (user_id) DO UPDATE SET
         name_enc = CASE WHEN $4 THEN EXCLUDED.name_enc ELSE people.name_enc END,
         email_enc = CASE WHEN $5 THEN EXCLUDED.email_enc ELSE people.email_enc END,
         updated_at = now()`,
      [
        userId,
        enc('name', fields.name),
        enc('email', fields.email),
        fields.name !== undefined,
        fields.email !== undefined,
      ],
    )
    return true
  }

  async get(userId: string): Promise<Person | null> {
    const res = await this.db.query<{ name_enc: Uint8Array | null; email_enc: Uint8Array | null }>(
      'SELECT name_enc, email_enc FROM people WHERE user_id = $1',
      [userId],
    )
    const r = res.rows[0]
    if (!r) return null
    return {
      userId,
      name: r.name_enc ? decryptField(this.key, userId, 'name', r.name_enc) : null,
      email: r.email_enc ? decryptField(this.key, userId, 'email', r.email_enc) : null,
    }
  }

  /**
   * Migration 0007 moved plaintext names/e-mails it found (none that pulsegate wrote) into people_plaintext_legacy,
   * having no key in SQL. The first process holding the key encrypts them into people and drops that table, in one
   * transaction when the store offers it. Returns the rows encrypted.
   */
  async reencryptLegacy(atomically: <T>(fn: (q: Queryable) => Promise<T>) => Promise<T>): Promise<number> {
    const exists = await this.db.query<{ t: string | null }>(`SELECT to_regclass('people_plaintext_legacy')::text AS t`)
    if (!exists.rows[0]?.t) return 0
    return atomically(async (q) => {
      const rows = await q.query<{ user_id: string; display_name: string | null; email: string | null }>(
        'SELECT user_id, display_name, email FROM people_plaintext_legacy',
      )
      const store = new PeopleStore(q, this.key)
      for (const r of rows.rows) {
        // Legacy values were never length-checked: keep them whole rather than refuse the migration.
        await store.upsertUnchecked(r.user_id, r.display_name, r.email)
      }
      await q.query('DROP TABLE people_plaintext_legacy')
      return rows.rows.length
    })
  }

  private async upsertUnchecked(userId: string, name: string | null, email: string | null): Promise<void> {
    await this.db.query(
      `INSERT INTO people (user_id, name_enc, email_enc) VALUES ($1, $2, $3)
       ON CONFLICT (user_id) DO UPDATE SET name_enc = EXCLUDED.name_enc, email_enc = EXCLUDED.email_enc, updated_at = now()`,
      [
        userId,
        name === null ? null : encryptField(this.key, userId, 'name', name),
        email === null ? null : encryptField(this.key, userId, 'email', email),
      ],
    )
  }
}
