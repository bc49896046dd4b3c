// Pseudonyms: deterministic per key, unlinkable across keys, inside the id grammar; and the key loading rules.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { KeyError, keyFile, loadKey, parseKey } from '../../src/ops/keys.js'
import {
  ExternalIdError,
  loadPseudonymKey,
  PSEUDONYM_KEY,
  PSEUDONYM_LENGTH,
  pseudonymFor,
} from '../../src/ops/pseudonym.js'
import { ID_RE } from '../../src/topics/grammar.js'
import { tempDir } from '../helpers/harness.js'

const keyA = parseKey('11'.repeat(32), PSEUDONYM_KEY, 'test')
const keyB = parseKey('22'.repeat(32), PSEUDONYM_KEY, 'test')

describe('pseudonymFor', () => {
  it('matches a known answer computed here with node:crypto', () => {
    // Independently: "u" then HMAC-SHA256(key, "pulsegate/user/v1" NUL "acct-42"), base64url, first 22 characters.
    const mac = crypto.createHmac('sha256', Buffer.alloc(32, 0x11))
    mac.update(Buffer.concat([Buffer.from('pulsegate/user/v1'), Buffer.of(0), Buffer.from('acct-42')]))
    const expected = `u${mac.digest('base64url').slice(0, 22)}`
    expect(pseudonymFor(keyA, 'acct-42')).toBe(expected)
    expect(expected).toHaveLength(23)
  })

  it('is deterministic, grammar-valid, differs between keys and between external ids', () => {
    fc.assert(
      fc.property(fc.string({ minLength: 1, maxLength: 80, unit: 'grapheme' }), (raw) => {
        const ext = raw.trim()
        if (ext.length === 0) return
        const a = pseudonymFor(keyA, ext)
        expect(a).toMatch(ID_RE)
        // never an option to a command line (a digest starting with '-' once made `users erase <id>` fail)
        expect(a).toMatch(/^u[A-Za-z0-9_-]{22}$/)
        expect(a).toHaveLength(PSEUDONYM_LENGTH)
        expect(pseudonymFor(keyA, ext)).toBe(a)
        expect(pseudonymFor(keyB, ext)).not.toBe(a)
        expect(pseudonymFor(keyA, `${ext}x`)).not.toBe(a)
      }),
    )
  })

  it('the same text in two Unicode normal forms is one person; case is not folded', () => {
    expect(pseudonymFor(keyA, 'jos\u00e9@example.org')).toBe(pseudonymFor(keyA, 'jose\u0301@example.org'))
    expect(pseudonymFor(keyA, 'Ann@example.org')).not.toBe(pseudonymFor(keyA, 'ann@example.org'))
  })

  it('refuses empty, padded and overlong external ids without quoting them', () => {
    for (const bad of ['', ' acct-1', 'acct-1\n', 'x'.repeat(513)]) {
      let err: unknown
      try {
        pseudonymFor(keyA, bad)
      } catch (e) {
        err = e
      }
      expect(err).toBeInstanceOf(ExternalIdError)
      if (bad.trim()) expect((err as Error).message).not.toContain(bad.trim())
    }
  })
})

describe('key loading', () => {
  it('accepts hex and base64 of at least 32 bytes and refuses shorter keys without echoing them', () => {
    const raw = crypto.randomBytes(32)
    expect(parseKey(raw.toString('hex'), PSEUDONYM_KEY, 'x').bytes.equals(raw)).toBe(true)
    expect(parseKey(raw.toString('base64'), PSEUDONYM_KEY, 'x').bytes.equals(raw)).toBe(true)
    expect(parseKey(raw.toString('base64url'), PSEUDONYM_KEY, 'x').bytes.equals(raw)).toBe(true)
    const short = crypto.randomBytes(31).toString('hex')
    expect(() => parseKey(short, PSEUDONYM_KEY, 'PULSEGATE_PSEUDONYM_KEY')).toThrow(/at least 32 bytes.*has 31/)
    expect(() => parseKey('not a key!', PSEUDONYM_KEY, 'x')).toThrow(KeyError)
    try {
      parseKey(short, PSEUDONYM_KEY, 'x')
    } catch (err) {
      expect((err as Error).message).not.toContain(short)
    }
  })

  it('a configured key wins; else a key file is generated once (0600 in a 0700 dir) and read back', () => {
    const dataDir = tempDir('pulsegate-keys-')
    const configured = crypto.randomBytes(32).toString('hex')
    const withKey = { dataDir, privacy: { pseudonymKey: configured, auditCheckpointMs: 0 } }
    expect(loadPseudonymKey(withKey).bytes.toString('hex')).toBe(configured)
    expect(fs.existsSync(keyFile(dataDir, PSEUDONYM_KEY))).toBe(false)

    const cfg = { dataDir, privacy: { auditCheckpointMs: 0 } }
    const first = loadPseudonymKey(cfg)
    const file = keyFile(dataDir, PSEUDONYM_KEY)
    expect(fs.statSync(file).mode & 0o777).toBe(0o600)
    expect(fs.statSync(path.dirname(file)).mode & 0o777).toBe(0o700)
    expect(first.bytes).toHaveLength(32)
    expect(loadPseudonymKey(cfg).bytes.equals(first.bytes)).toBe(true)
    // no temp files left behind
    expect(fs.readdirSync(path.dirname(file))).toEqual(['pseudonym.key'])

    fs.chmodSync(file, 0o644)
    expect(() => loadPseudonymKey(cfg)).toThrow(/chmod 600/)
  })

  it('without a key and not allowed to create one, says where to get it', () => {
    const dataDir = tempDir('pulsegate-keys-')
    expect(() => loadKey(undefined, dataDir, PSEUDONYM_KEY, false)).toThrow(/PULSEGATE_PSEUDONYM_KEY/)
    expect(fs.existsSync(keyFile(dataDir, PSEUDONYM_KEY))).toBe(false)
  })
})
