// Per-device content keys (A256GCM, COSE_Encrypt0 readings): generated at provisioning, handed to the device once,
// and kept in the device record only wrapped under the server's device-key, a key outside the database (like the
// people key: config or <data dir>/keys/device-wrap.key). A database dump alone therefore reads no encrypted reading.
//
// Wrapped form: 0x01 ‖ key id (8 bytes) ‖ nonce (12) ‖ ciphertext (32) ‖ tag (16). The associated data binds it to
// its device ('pulsegate/content-key/v1\0' ‖ device id ‖ header): a wrapped key copied to another device's row does
// not unwrap there, and a process holding another wrap key is told so, not handed garbage.
import crypto from 'node:crypto'
import type { BrokerConfig } from '../../broker.config.js'
import { type KeySpec, loadKey, type SecretKey } from '../ops/keys.js'

export const DEVICE_WRAP_KEY: KeySpec = {
  file: 'device-wrap.key',
  setting: 'privacy.deviceWrapKey (PULSEGATE_DEVICE_WRAP_KEY)',
  minBytes: 32,
  maxBytes: 32,
}

export const CONTENT_KEY_BYTES = 32
const FORMAT = 1
const HEADER = 1 + 8
const NONCE = 12
const TAG = 16

export class ContentKeyError extends Error {}

export function loadDeviceWrapKey(config: Pick<BrokerConfig, 'dataDir' | 'privacy'>): SecretKey {
  return loadKey(config.privacy.deviceWrapKey, config.dataDir, DEVICE_WRAP_KEY)
}

function aad(deviceId: string, header: Buffer): Buffer {
  return Buffer.concat([Buffer.from(`pulsegate/content-key/v1\u0000${deviceId}`, 'utf8'), header])
}

/** A fresh random content key for a device. */
export function newContentKey(): Buffer {
  return crypto.randomBytes(CONTENT_KEY_BYTES)
}

export function wrapContentKey(wrap: SecretKey, deviceId: string, contentKey: Uint8Array): Buffer {
  if (contentKey.length !== CONTENT_KEY_BYTES) throw new ContentKeyError(`a content key has ${CONTENT_KEY_BYTES} bytes`)
  const header = Buffer.concat([Buffer.of(FORMAT), Buffer.from(wrap.id, 'hex')])
  const nonce = crypto.randomBytes(NONCE)
  const cipher = crypto.createCipheriv('aes-256-gcm', wrap.bytes, nonce, { authTagLength: TAG })
  cipher.setAAD(aad(deviceId, header))
  const body = Buffer.concat([cipher.update(contentKey), cipher.final()])
  return Buffer.concat([header, nonce, body, cipher.getAuthTag()])
}

export function unwrapContentKey(wrap: SecretKey, deviceId: string, blob: Uint8Array): Buffer {
  const b = Buffer.from(blob)
  if (b.length !== HEADER + NONCE + CONTENT_KEY_BYTES + TAG || b[0] !== FORMAT) {
    throw new ContentKeyError(`content key of ${deviceId}: not a wrapped key`)
  }
  const id = b.subarray(1, HEADER).toString('hex')
  if (id !== wrap.id) {
    throw new ContentKeyError(`content key of ${deviceId} is wrapped under key ${id}, this process holds ${wrap.id}`)
  }
  const decipher = crypto.createDecipheriv('aes-256-gcm', wrap.bytes, b.subarray(HEADER, HEADER + NONCE), {
    authTagLength: TAG,
  })
  decipher.setAAD(aad(deviceId, b.subarray(0, HEADER)))
  decipher.setAuthTag(b.subarray(b.length - TAG))
  try {
    return Buffer.concat([decipher.update(b.subarray(HEADER + NONCE, b.length - TAG)), decipher.final()])
  } catch {
    throw new ContentKeyError(`content key of ${deviceId} does not unwrap (altered, or another device's)`)
  }
}
