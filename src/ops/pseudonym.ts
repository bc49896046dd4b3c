// Pseudonymous user ids: an app backend knows its users by account id or e-mail; pulsegate only ever sees
// HMAC-SHA256(key, namespace ‖ external id), a keyed hash (ENISA's "hashing with key"): without the key an external id
// cannot be tested against a pseudonym, and another key gives unlinkable ids. The key lives outside the database.
import crypto from 'node:crypto'
import type { BrokerConfig } from '../../broker.config.js'
import { ID_RE } from '../topics/grammar.js'
import { type KeySpec, loadKey, type SecretKey } from './keys.js'

export const PSEUDONYM_KEY: KeySpec = {
  file: 'pseudonym.key',
  setting: 'privacy.pseudonymKey (PULSEGATE_PSEUDONYM_KEY)',
  minBytes: 32,
  maxBytes: 1024,
}

/** Domain separation: the same key used for another derivation never yields a user id. */
export const PSEUDONYM_NAMESPACE = 'pulsegate/user/v1\u0000'

/**
 * Characters kept of the base64url HMAC: 22 characters = the first 132 bits. Ids appear in every topic, token, alert
 * row and index, so half of the 43-character full digest saves space everywhere; the chance that any two of n users
 * collide is about n²/2¹³³ (10⁹ users: 10⁻²²), far below any other failure. Fits the id grammar [A-Za-z0-9_-]{1,64}.
 */
export const PSEUDONYM_DIGEST_CHARS = 22

/**
 * Every pseudonym starts with this letter: base64url starts one digest in 64 with '-', and an id such as "-Xy…" is
 * read as an option by every command line (ours included: `pulsegate users erase -Xy…` failed), by shells' tools and
 * by scripts. A fixed letter also tells a pseudonym from an operator-chosen id at a glance.
 */
export const PSEUDONYM_PREFIX = 'u'

/** The length of every pseudonym: the prefix and the digest characters. */
export const PSEUDONYM_LENGTH = PSEUDONYM_PREFIX.length + PSEUDONYM_DIGEST_CHARS

/** External ids are opaque strings of at most this many characters (e-mails are ≤ 254). */
export const EXTERNAL_ID_MAX = 512

export class ExternalIdError extends Error {}

export function loadPseudonymKey(config: Pick<BrokerConfig, 'dataDir' | 'privacy'>, mayCreate = true): SecretKey {
  return loadKey(config.privacy.pseudonymKey, config.dataDir, PSEUDONYM_KEY, mayCreate)
}

/**
 * Checks an external id without ever quoting it (error messages end up in logs). It is used as given, after Unicode
 * NFC normalisation (the same text typed on two systems gives one id): case matters, and surrounding white space is
 * refused rather than trimmed so that "a@b.example " cannot silently become a second person.
 */
export function checkExternalId(externalId: string): string {
  if (externalId.length === 0) throw new ExternalIdError('the external id is empty')
  if (externalId.length > EXTERNAL_ID_MAX)
    throw new ExternalIdError(`the external id is longer than ${EXTERNAL_ID_MAX} characters`)
  if (externalId.trim() !== externalId) throw new ExternalIdError('the external id starts or ends with white space')
  return externalId.normalize('NFC')
}

/** The pseudonymous user id of an external account id under `key`: deterministic, grammar-valid. */
export function pseudonymFor(key: SecretKey | Buffer, externalId: string): string {
  const bytes = Buffer.isBuffer(key) ? key : key.bytes
  const id =
    PSEUDONYM_PREFIX +
    crypto
      .createHmac('sha256', bytes)
      .update(PSEUDONYM_NAMESPACE + checkExternalId(externalId), 'utf8')
      .digest('base64url')
      .slice(0, PSEUDONYM_DIGEST_CHARS)
  // base64url's alphabet is the id grammar's; kept as an assertion so a change of either cannot go unnoticed.
  if (!ID_RE.test(id)) throw new Error('pseudonym outside the id grammar')
  return id
}
