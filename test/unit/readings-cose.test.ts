// Stage 0 of the readings pipeline alone: COSE_Sign1 / COSE_Encrypt0 opened with real keys (node:crypto ES256 and
// AES-256-GCM via @auth0/cose), and the content-key wrapping of the device record.
import crypto from 'node:crypto'
import { decode, encode } from 'cbor-x'
import { describe, expect, it } from 'vitest'
import { ContentKeyError, newContentKey, unwrapContentKey, wrapContentKey } from '../../src/identity/content-key.js'
import { certificateKey } from '../../src/identity/device-keys.js'
import { generateCa, issueCertWithCa } from '../../src/identity/pki.js'
import { signingOf } from '../../src/identity/signing-rpc.js'
import { keyId, type SecretKey } from '../../src/ops/keys.js'
import {
  type DeviceKeyMaterial,
  EnvelopeError,
  encryptBatch,
  envelopeKind,
  openEnvelope,
  signBatch,
} from '../../src/pipeline/envelope.js'
import { RegistryError } from '../../src/store/registry.js'
import { createMetrics } from '../../src/metrics.js'
import { EnvelopeStage } from '../../src/pipeline/envelope-stage.js'
import { alterSign1, bumpHeartRates } from '../helpers/cose.js'

const ec = () => crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
const batch = (hr = 72) => Buffer.from(encode({ seq: 7, samples: [{ t: 1_700_000_000_000, hr }] }))
const material = (over: Partial<DeviceKeyMaterial> = {}): DeviceKeyMaterial => ({
  verifyKey: null,
  signedRequired: false,
  contentKey: null,
  ...over,
})

async function reason(p: Promise<unknown>): Promise<string> {
  try {
    await p
    return 'accepted'
  } catch (err) {
    if (err instanceof EnvelopeError) return err.reason
    throw err
  }
}

describe('COSE_Sign1 readings (ES256, kid = device id)', () => {
  const dev = ec()
  const keys = material({ verifyKey: dev.publicKey })

  it('round trip: the inner batch comes back, marked signed', async () => {
    const signed = await signBatch(batch(), 'watch-1', dev.privateKey)
    expect(envelopeKind(signed)).toBe('sign1')
    const opened = await openEnvelope(signed, 'watch-1', keys)
    expect(opened).toMatchObject({ signed: true, encrypted: false })
    expect(decode(opened.payload)).toEqual({ seq: 7, samples: [{ t: 1_700_000_000_000, hr: 72 }] })
  })

  it('a tampered payload (a value changed in transit) is bad_signature', async () => {
    const signed = await signBatch(batch(), 'watch-1', dev.privateKey)
    const altered = bumpHeartRates(signed, 40)
    expect(altered.equals(signed)).toBe(false)
    expect(await reason(openEnvelope(altered, 'watch-1', keys))).toBe('bad_signature')
    // The helper itself keeps a message intact when it changes nothing.
    expect(
      await reason(
        openEnvelope(
          alterSign1(signed, (p) => p),
          'watch-1',
          keys,
        ),
      ),
    ).toBe('accepted')
  })

  it('signed with another key (a forger, or another device) is bad_signature', async () => {
    const other = ec()
    const signed = await signBatch(batch(), 'watch-1', other.privateKey)
    expect(await reason(openEnvelope(signed, 'watch-1', keys))).toBe('bad_signature')
  })

  it("another device's signed batch on this device's topic is device_mismatch, even with the right key", async () => {
    const signed = await signBatch(batch(), 'strap-1', dev.privateKey)
    expect(await reason(openEnvelope(signed, 'watch-1', keys))).toBe('device_mismatch')
  })

  it('policy: plain batches pass unless signed readings are required', async () => {
    expect(await reason(openEnvelope(batch(), 'watch-1', keys))).toBe('accepted')
    expect(await reason(openEnvelope(batch(), 'watch-1', { ...keys, signedRequired: true }))).toBe('unsigned')
    const opened = await openEnvelope(batch(), 'watch-1', keys)
    expect(opened.signed).toBe(false)
  })

  it('no registered certificate: unknown_signing_key; garbage after a COSE tag: malformed_cose', async () => {
    const signed = await signBatch(batch(), 'watch-1', dev.privateKey)
    expect(await reason(openEnvelope(signed, 'watch-1', material()))).toBe('unknown_signing_key')
    expect(await reason(openEnvelope(Buffer.from([0xd2, 0x01]), 'watch-1', keys))).toBe('malformed_cose')
    expect(await reason(openEnvelope(Buffer.from([0xd2, 0x84, 0x40, 0xa0, 0xf6, 0x40]), 'watch-1', keys))).toBe(
      'malformed_cose',
    )
  })

  it("the registered certificate's key is the one that verifies", async () => {
    const ca = await generateCa('test CA')
    const issued = await issueCertWithCa(ca.certPem, ca.keyPem, 'watch-2')
    const verifyKey = certificateKey(issued.certPem)
    expect(verifyKey).not.toBeNull()
    const signed = await signBatch(batch(), 'watch-2', crypto.createPrivateKey(issued.keyPem))
    expect(await reason(openEnvelope(signed, 'watch-2', material({ verifyKey })))).toBe('accepted')
    expect(certificateKey('not a certificate')).toBeNull()
  })
})

describe('COSE_Encrypt0 around the Sign1 (A256GCM content key)', () => {
  const dev = ec()
  const contentKey = newContentKey()
  const keys = material({ verifyKey: dev.publicKey, contentKey })

  it('round trip: decrypted, verified, marked signed and encrypted', async () => {
    const sealed = await encryptBatch(await signBatch(batch(), 'watch-1', dev.privateKey), 'watch-1', contentKey)
    expect(envelopeKind(sealed)).toBe('encrypt0')
    // What a bridge sees: no sample value in the clear.
    expect(sealed.includes(batch())).toBe(false)
    const opened = await openEnvelope(sealed, 'watch-1', keys)
    expect(opened).toMatchObject({ signed: true, encrypted: true })
    expect(decode(opened.payload)).toMatchObject({ seq: 7 })
  })

  it('another content key does not open it (decrypt_failed); no content key: no_content_key', async () => {
    const sealed = await encryptBatch(await signBatch(batch(), 'watch-1', dev.privateKey), 'watch-1', newContentKey())
    expect(await reason(openEnvelope(sealed, 'watch-1', keys))).toBe('decrypt_failed')
    expect(await reason(openEnvelope(sealed, 'watch-1', material({ verifyKey: dev.publicKey })))).toBe('no_content_key')
  })

  it('a flipped ciphertext byte is decrypt_failed; another device id is device_mismatch', async () => {
    const signed = await signBatch(batch(), 'watch-1', dev.privateKey)
    const sealed = await encryptBatch(signed, 'watch-1', contentKey)
    const flipped = Buffer.from(sealed)
    flipped[flipped.length - 20] = (flipped[flipped.length - 20] as number) ^ 0x01
    expect(await reason(openEnvelope(flipped, 'watch-1', keys))).toBe('decrypt_failed')
    const forOther = await encryptBatch(signed, 'strap-1', contentKey)
    expect(await reason(openEnvelope(forOther, 'watch-1', keys))).toBe('device_mismatch')
  })

  it('encryption without a signature inside is refused', async () => {
    const sealed = await encryptBatch(batch(), 'watch-1', contentKey)
    expect(await reason(openEnvelope(sealed, 'watch-1', keys))).toBe('malformed_cose')
  })
})

describe('content keys at rest (wrapped under the server key)', () => {
  const wrapKey = (bytes = crypto.randomBytes(32)): SecretKey => ({ bytes, id: keyId(bytes), origin: 'test' })

  it('unwraps for its device only, under its wrap key only', () => {
    const wrap = wrapKey()
    const key = newContentKey()
    const blob = wrapContentKey(wrap, 'watch-1', key)
    expect(blob.includes(key)).toBe(false)
    expect(unwrapContentKey(wrap, 'watch-1', blob).equals(key)).toBe(true)
    expect(() => unwrapContentKey(wrap, 'strap-1', blob)).toThrow(ContentKeyError)
    expect(() => unwrapContentKey(wrapKey(), 'watch-1', blob)).toThrow(/wrapped under key/)
    const bad = Buffer.from(blob)
    bad[30] = (bad[30] as number) ^ 1
    expect(() => unwrapContentKey(wrap, 'watch-1', bad)).toThrow(ContentKeyError)
  })
})

describe('registration: the certificate must be the registered one', () => {
  it('refuses a PEM whose fingerprint is not the registered fingerprint', async () => {
    const ca = await generateCa('test CA')
    const a = await issueCertWithCa(ca.certPem, ca.keyPem, 'watch-1')
    const b = await issueCertWithCa(ca.certPem, ca.keyPem, 'watch-1')
    expect(signingOf({ fingerprint: a.fingerprint256, certPem: a.certPem })).toEqual({ certPem: a.certPem })
    expect(() => signingOf({ fingerprint: a.fingerprint256, certPem: b.certPem })).toThrow(RegistryError)
    expect(() => signingOf({ fingerprint: a.fingerprint256, certPem: 'garbage' })).toThrow(RegistryError)
  })
})

describe('envelope stage: outcomes in arrival order per device', () => {
  it('a plain batch behind signed ones waits for them; verification finishing out of order does not reorder', async () => {
    const dev = ec()
    const keys = material({ verifyKey: dev.publicKey })
    let cold = true
    const source = {
      // The first look-up is a miss (loaded), later ones hit the cache.
      get: () => {
        if (!cold) return keys
        cold = false
        return new Promise<DeviceKeyMaterial>((r) => setTimeout(() => r(keys), 20))
      },
    }
    const stage = new EnvelopeStage(source, createMetrics(), { error: () => undefined })
    const order: string[] = []
    const all: Promise<void>[] = []
    const push = (label: string, payload: Buffer) =>
      all.push(
        new Promise((resolve) =>
          stage.open('watch-1', payload, {
            opened: (o) => {
              order.push(`${label}:${o.signed ? 'signed' : 'plain'}`)
              resolve()
            },
            refused: (reason) => {
              order.push(`${label}:${reason}`)
              resolve()
            },
            unavailable: () => {
              order.push(`${label}:unavailable`)
              resolve()
            },
          }),
        ),
      )
    push('1', batch())
    for (let i = 2; i <= 6; i++) push(String(i), await signBatch(batch(60 + i), 'watch-1', dev.privateKey))
    push('7', bumpHeartRates(await signBatch(batch(), 'watch-1', dev.privateKey), 5))
    push('8', batch())
    await Promise.all(all)
    expect(order).toEqual([
      '1:plain',
      '2:signed',
      '3:signed',
      '4:signed',
      '5:signed',
      '6:signed',
      '7:bad_signature',
      '8:plain',
    ])
    // Nothing left pending: a later plain batch is answered synchronously again.
    let sync = false
    stage.open('watch-1', batch(), {
      opened: () => (sync = true),
      refused: () => undefined,
      unavailable: () => undefined,
    })
    expect(sync).toBe(true)
  })
})
