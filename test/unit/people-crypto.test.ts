// People encryption: AES-256-GCM with a fresh nonce per value, bound to its person and field, naming its key.
import crypto from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { parseKey } from '../../src/ops/keys.js'
import { decryptField, encryptField, normalizeTimeZone, PEOPLE_KEY, PeopleError } from '../../src/ops/people.js'

const key = parseKey(crypto.randomBytes(32).toString('hex'), PEOPLE_KEY, 'test')
const other = parseKey(crypto.randomBytes(32).toString('base64'), PEOPLE_KEY, 'test')

describe('people field encryption', () => {
  it('round-trips, with a new nonce each time and no plaintext bytes in the ciphertext', () => {
    const name = 'Zoë Quartermaine-Ödegaard'
    const a = encryptField(key, 'u1', 'name', name)
    const b = encryptField(key, 'u1', 'name', name)
    expect(a.equals(b)).toBe(false)
    expect(a.subarray(9, 21).equals(b.subarray(9, 21))).toBe(false)
    expect(decryptField(key, 'u1', 'name', a)).toBe(name)
    expect(a.toString('latin1')).not.toContain('Quartermaine')
    expect(a.toString('utf8')).not.toContain('Quartermaine')
    // format 1, the key id, 12-byte nonce, ciphertext as long as the UTF-8 plaintext, 16-byte tag
    expect(a[0]).toBe(1)
    expect(a.subarray(1, 9).toString('hex')).toBe(key.id)
    expect(a.length).toBe(1 + 8 + 12 + Buffer.byteLength(name) + 16)
  })

  it('a ciphertext moved to another person or field, tampered with, or read with another key fails', () => {
    const blob = encryptField(key, 'u1', 'email', 'a@example.org')
    expect(() => decryptField(key, 'u2', 'email', blob)).toThrow(PeopleError)
    expect(() => decryptField(key, 'u1', 'name', blob)).toThrow(/does not authenticate/)
    const flipped = Buffer.from(blob)
    flipped[25] = (flipped[25] as number) ^ 1
    expect(() => decryptField(key, 'u1', 'email', flipped)).toThrow(/does not authenticate/)
    expect(() => decryptField(other, 'u1', 'email', blob)).toThrow(new RegExp(`under key ${key.id}`))
    expect(() => decryptField(key, 'u1', 'email', Buffer.alloc(10))).toThrow(PeopleError)
  })

  it('the people key must be exactly 32 bytes', () => {
    expect(() => parseKey(crypto.randomBytes(48).toString('hex'), PEOPLE_KEY, 'PULSEGATE_PEOPLE_KEY')).toThrow(
      /must be 32 bytes/,
    )
  })
})

describe('normalizeTimeZone', () => {
  it('accepts IANA names (canonicalised) and refuses offsets and unknown zones', () => {
    expect(normalizeTimeZone('Europe/Berlin')).toBe('Europe/Berlin')
    expect(normalizeTimeZone('utc')).toBe('UTC')
    expect(normalizeTimeZone('america/new_york')).toBe('America/New_York')
    expect(() => normalizeTimeZone('+01:00')).toThrow(/offset/)
    expect(() => normalizeTimeZone('Mars/Olympus_Mons')).toThrow(/unknown time zone/)
  })
})
