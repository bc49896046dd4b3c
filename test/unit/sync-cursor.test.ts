// Commit-order sync cursors (src/outputs/sync-order.ts): opaque strings that round-trip, and a clear refusal of
// anything the broker did not make.
import { describe, expect, it } from 'vitest'
import { BadCursorError, decodeCursor, encodeCursor, START_CURSOR } from '../../src/outputs/sync-order.js'
import { syncRequestSchema } from '../../src/outputs/sync.js'

describe('sync cursors', () => {
  it('round-trip positions (numbers and string keys)', () => {
    for (const p of [
      { seq: 12345, kind: 0, key: [7, 1, '1764061200000000'] },
      { seq: 9, kind: 1, key: ['2f1c7a52-0000-4000-8000-000000000000'] },
      { seq: 2 ** 40, kind: 4, key: [] },
    ]) {
      expect(decodeCursor(encodeCursor(p))).toEqual(p)
    }
  })

  it('"0" is the start: everything after transaction 0', () => {
    expect(decodeCursor(START_CURSOR)).toEqual({ seq: 0, kind: 4, key: [] })
  })

  it('refuses cursors it did not make', () => {
    for (const c of [
      '',
      'yesterday',
      'c1.',
      'c1.!!!',
      `c1.${Buffer.from('[1]').toString('base64url')}`,
      `c1.${Buffer.from('[-1,0]').toString('base64url')}`,
      `c1.${Buffer.from('[1,9]').toString('base64url')}`,
    ]) {
      expect(() => decodeCursor(c), c).toThrow(BadCursorError)
    }
  })

  it('the request schema takes a commit-order cursor or the older time cursors', () => {
    expect(syncRequestSchema.parse({ cursor: '0' }).cursor).toBe('0')
    expect(syncRequestSchema.parse({ cursor: { readings: 5 } }).cursor).toEqual({ readings: 5 })
    expect(syncRequestSchema.parse({}).cursor).toEqual({})
    expect(syncRequestSchema.safeParse({ cursor: 5 }).success).toBe(false)
    expect(syncRequestSchema.parse({ cursor: '0', kinds: ['consents'] }).kinds).toEqual(['consents'])
  })
})
