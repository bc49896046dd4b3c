// The canonical form is a storage format: every stored hash depends on it byte for byte, so it is pinned here.
import crypto from 'node:crypto'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  type AuditRow,
  canonicalJson,
  canonicalRow,
  chainHash,
  GENESIS_HASH,
  isoMicros,
  prepareEntry,
} from '../../src/ops/audit-chain.js'

const row: AuditRow = {
  seq: 7,
  at: '2025-01-31T12:00:00.123000Z',
  actorRole: 'admin',
  actorId: 'ops1',
  action: 'rpc.revokeDevice',
  subject: null,
  purpose: null,
  details: '{"deviceId":"trk-1"}',
}

function shuffleKeys(v: unknown, rnd: () => number): unknown {
  if (Array.isArray(v)) return v.map((x) => shuffleKeys(x, rnd))
  if (v && typeof v === 'object') {
    const entries = Object.entries(v).sort(() => rnd() - 0.5)
    return Object.fromEntries(entries.map(([k, x]) => [k, shuffleKeys(x, rnd)]))
  }
  return v
}

describe('audit canonical form', () => {
  it('follows RFC 8785 (JCS) on its own example', () => {
    const input = JSON.parse(
      '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],' +
        '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/","literals":[null,true,false]}',
    )
    expect(canonicalJson(input)).toBe(
      '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],' +
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    )
  })

  it('does not depend on key order, and reading it back gives the same text', () => {
    fc.assert(
      fc.property(fc.jsonValue(), fc.integer(), (v, seed) => {
        let x = seed
        const rnd = () => {
          x = (x * 1103515245 + 12345) % 2 ** 31
          return Math.abs(x) / 2 ** 31
        }
        const text = canonicalJson(v)
        expect(canonicalJson(shuffleKeys(v, rnd))).toBe(text)
        expect(canonicalJson(JSON.parse(text))).toBe(text)
        expect(JSON.parse(text)).toEqual(JSON.parse(JSON.stringify(v)))
      }),
    )
  })

  it('pins the canonical row and its hash', () => {
    expect(canonicalRow(row)).toBe(
      '{"v":1,"seq":7,"at":"2025-01-31T12:00:00.123000Z","actor_role":"admin","actor_id":"ops1",' +
        '"action":"rpc.revokeDevice","subject":null,"purpose":null,"details":{"deviceId":"trk-1"}}',
    )
    const expected = crypto
      .createHash('sha256')
      .update(Buffer.concat([GENESIS_HASH, Buffer.from(canonicalRow(row))]))
      .digest('hex')
    expect(chainHash(GENESIS_HASH, row).toString('hex')).toBe(expected)
  })

  it('every field and the previous hash change the hash', () => {
    const base = chainHash(GENESIS_HASH, row).toString('hex')
    const variants: AuditRow[] = [
      { ...row, seq: 8 },
      { ...row, at: '2025-01-31T12:00:00.123001Z' },
      { ...row, actorRole: 'cli' },
      { ...row, actorId: null },
      { ...row, action: 'rpc.registerDevice' },
      { ...row, subject: 'ops1' },
      { ...row, purpose: 'export' },
      { ...row, details: '{"deviceId":"trk-2"}' },
    ]
    for (const v of variants) expect(chainHash(GENESIS_HASH, v).toString('hex')).not.toBe(base)
    expect(chainHash(Buffer.alloc(32, 1), row).toString('hex')).not.toBe(base)
  })

  it('times are microsecond ISO 8601 in UTC', () => {
    expect(isoMicros(new Date(Date.UTC(2025, 0, 31, 12, 0, 0, 123)))).toBe('2025-01-31T12:00:00.123000Z')
  })

  it('refuses entries that would put a name or an e-mail in the chain, or a payload', () => {
    const ok = { actor: { role: 'app' as const, id: 'u1' }, action: 'sync.request', subject: 'u1', purpose: null }
    expect(prepareEntry(ok, new Date(0)).details).toBe('{}')
    expect(() => prepareEntry({ ...ok, subject: 'bob@example.com' }, new Date())).toThrow(/subject/)
    expect(() => prepareEntry({ ...ok, actor: { role: 'app', id: 'Bob Smith' } }, new Date())).toThrow(/actor id/)
    expect(() => prepareEntry({ ...ok, details: { blob: 'x'.repeat(20_000) } }, new Date())).toThrow(/too large/)
    expect(() => prepareEntry({ ...ok, action: 'sync request' }, new Date())).toThrow(/invalid action/)
  })
})
