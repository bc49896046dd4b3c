// Stage 0: the COSE envelope of a readings batch, opened before decode and validation. A tracker may sign its CBOR
// batch (COSE_Sign1, RFC 9052, ES256 with the key of its registered certificate) and may encrypt the signed message
// (COSE_Encrypt0 around the Sign1: sign-then-encrypt, A256GCM with its content key). A bridge relays the bytes
// unchanged; what it alters fails here. Both carry the device id as `kid` in the PROTECTED header, so a batch
// replayed on another device's topic is refused as `device_mismatch` whatever the keys (docs/device-signing.md).
// Contract: openEnvelope resolves with the inner batch bytes or rejects with an EnvelopeError, nothing else.
import { type KeyObject, randomBytes } from 'node:crypto'
import { Algorithms, Encrypt0, EncryptionAlgorithms, Headers, Sign1 } from '@auth0/cose'

/** What the registry holds about a device's own keys (src/identity/device-keys.ts caches it). */
export interface DeviceKeyMaterial {
  /** the public key of the device's registered certificate; null: none registered (or revoked) */
  verifyKey: KeyObject | null
  /** the device's policy: unsigned batches are refused */
  signedRequired: boolean
  /** the A256GCM content key, unwrapped; null: encryption not provisioned */
  contentKey: Buffer | null
}

/** Where the pipeline gets a device's key material: synchronously when cached, else once loaded. */
export interface DeviceKeySource {
  get(deviceId: string): DeviceKeyMaterial | Promise<DeviceKeyMaterial>
}

export type EnvelopeReason =
  /** the device's policy requires signed readings and this batch is plain */
  | 'unsigned'
  /** the signature does not verify against the registered certificate's key: altered, or signed by another key */
  | 'bad_signature'
  /** the protected kid names another device than the topic's: a replay across devices */
  | 'device_mismatch'
  /** signed, but the device has no registered certificate to verify with */
  | 'unknown_signing_key'
  /** encrypted, but the device has no content key */
  | 'no_content_key'
  /** encrypted, and the content key does not open it (altered, or another key) */
  | 'decrypt_failed'
  /** a COSE structure that is not a well-formed tagged/untagged Sign1 or Encrypt0 as this pipeline takes them */
  | 'malformed_cose'

export class EnvelopeError extends Error {
  override readonly name = 'EnvelopeError'
  constructor(
    public readonly reason: EnvelopeReason,
    message: string,
  ) {
    super(message)
  }
}

export interface OpenedBatch {
  /** the CBOR/JSON batch inside (the payload itself when plain) */
  payload: Buffer
  signed: boolean
  encrypted: boolean
}

export type EnvelopeKind = 'sign1' | 'encrypt0' | null

/**
 * Told apart by the first byte, as decode.ts tells CBOR from JSON: tag 18 (0xD2) or an untagged 4-array (0x84) is a
 * Sign1, tag 16 (0xD0) or an untagged 3-array (0x83) an Encrypt0; a plain batch starts with a map head or `{`.
 */
export function envelopeKind(payload: Uint8Array): EnvelopeKind {
  const b = payload[0]
  if (b === 0xd2 || b === 0x84) return 'sign1'
  if (b === 0xd0 || b === 0x83) return 'encrypt0'
  return null
}

const utf8 = new TextDecoder('utf-8', { fatal: true })

function protectedKid(headers: Map<number, unknown>): string | null {
  const kid = headers.get(Headers.KeyID)
  if (!(kid instanceof Uint8Array)) return null
  try {
    return utf8.decode(kid)
  } catch {
    return null
  }
}

function describe(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err)
  return msg.length > 200 ? msg.slice(0, 200) : msg
}

async function verifySign1(bytes: Uint8Array, deviceId: string, keys: DeviceKeyMaterial): Promise<Buffer> {
  let msg: Sign1
  try {
    msg = Sign1.decode(bytes)
  } catch (err) {
    throw new EnvelopeError('malformed_cose', `not a COSE_Sign1: ${describe(err)}`)
  }
  if (!(msg.payload instanceof Uint8Array) || msg.payload.length === 0) {
    throw new EnvelopeError('malformed_cose', 'COSE_Sign1 without an attached payload')
  }
  if (msg.protectedHeaders.get(Headers.Algorithm) !== Algorithms.ES256) {
    throw new EnvelopeError('malformed_cose', 'COSE_Sign1 must name ES256 (-7) in its protected header')
  }
  const kid = protectedKid(msg.protectedHeaders)
  if (kid !== deviceId) {
    throw new EnvelopeError(
      'device_mismatch',
      kid === null ? 'COSE_Sign1 carries no protected kid (the device id)' : 'signed for another device',
    )
  }
  if (!keys.verifyKey) throw new EnvelopeError('unknown_signing_key', 'the device has no registered certificate')
  try {
    await msg.verify(keys.verifyKey, { algorithms: [Algorithms.ES256] })
  } catch {
    throw new EnvelopeError('bad_signature', "signature does not verify with the device's registered certificate")
  }
  return Buffer.from(msg.payload.buffer, msg.payload.byteOffset, msg.payload.byteLength)
}

async function decryptEncrypt0(bytes: Uint8Array, deviceId: string, keys: DeviceKeyMaterial): Promise<Uint8Array> {
  let msg: Encrypt0
  try {
    msg = Encrypt0.decode(bytes)
  } catch (err) {
    throw new EnvelopeError('malformed_cose', `not a COSE_Encrypt0: ${describe(err)}`)
  }
  if (msg.protectedHeaders.get(Headers.Algorithm) !== EncryptionAlgorithms.A256GCM) {
    throw new EnvelopeError('malformed_cose', 'COSE_Encrypt0 must name A256GCM (3) in its protected header')
  }
  if (!(msg.ciphertext instanceof Uint8Array) || !(msg.unprotectedHeaders.get(Headers.IV) instanceof Uint8Array)) {
    throw new EnvelopeError('malformed_cose', 'COSE_Encrypt0 without ciphertext or IV')
  }
  // The protected header is the AEAD's associated data: a kid changed in transit fails decryption anyway.
  const kid = protectedKid(msg.protectedHeaders)
  if (kid !== deviceId) {
    throw new EnvelopeError(
      'device_mismatch',
      kid === null ? 'COSE_Encrypt0 carries no protected kid (the device id)' : 'encrypted for another device',
    )
  }
  if (!keys.contentKey) throw new EnvelopeError('no_content_key', 'the device has no content key provisioned')
  try {
    return await msg.decrypt(keys.contentKey, { algorithms: [EncryptionAlgorithms.A256GCM] })
  } catch {
    throw new EnvelopeError('decrypt_failed', "the device's content key does not open it")
  }
}

/**
 * Opens a batch's envelope for the device of its topic: decrypts (Encrypt0), verifies (Sign1), checks that both name
 * this device, and applies the device's policy to a plain batch. An encrypted batch must hold a Sign1: encryption
 * alone (a key the server shares) would not say that the tracker wrote it.
 */
export async function openEnvelope(payload: Buffer, deviceId: string, keys: DeviceKeyMaterial): Promise<OpenedBatch> {
  const kind = envelopeKind(payload)
  if (kind === null) {
    if (keys.signedRequired) throw new EnvelopeError('unsigned', 'this device must send signed readings (COSE_Sign1)')
    return { payload, signed: false, encrypted: false }
  }
  try {
    if (kind === 'sign1') return { payload: await verifySign1(payload, deviceId, keys), signed: true, encrypted: false }
    const inner = await decryptEncrypt0(payload, deviceId, keys)
    if (envelopeKind(inner) !== 'sign1') {
      throw new EnvelopeError('malformed_cose', 'an encrypted batch must hold a COSE_Sign1 (sign, then encrypt)')
    }
    return { payload: await verifySign1(inner, deviceId, keys), signed: true, encrypted: true }
  } catch (err) {
    if (err instanceof EnvelopeError) throw err
    throw new EnvelopeError('malformed_cose', `unexpected COSE failure: ${describe(err)}`)
  }
}

/** The device side (trackers, the simulator, tests): signs a batch for `deviceId` with the device's private key. */
export async function signBatch(batch: Uint8Array, deviceId: string, privateKey: KeyObject): Promise<Buffer> {
  const msg = await Sign1.sign(
    [
      [Headers.Algorithm, Algorithms.ES256],
      [Headers.KeyID, Buffer.from(deviceId, 'utf8')],
    ],
    undefined,
    batch,
    privateKey,
  )
  return msg.encode()
}

/** The device side: encrypts a signed batch (a Sign1's bytes) under the device's content key, fresh 96-bit IV. */
export async function encryptBatch(signed: Uint8Array, deviceId: string, contentKey: Uint8Array): Promise<Buffer> {
  const msg = await Encrypt0.encrypt(
    [
      [Headers.Algorithm, EncryptionAlgorithms.A256GCM],
      [Headers.KeyID, Buffer.from(deviceId, 'utf8')],
    ],
    [[Headers.IV, randomBytes(12)]],
    signed,
    contentKey,
  )
  return msg.encode()
}
