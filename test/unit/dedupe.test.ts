import crypto from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { payloadHash, SeqWindow } from '../../src/pipeline/dedupe.js'

describe('payloadHash', () => {
  it('is deterministic and a safe integer', () => {
    const b = Buffer.from('{"seq":1,"samples":[]}')
    expect(payloadHash(b)).toBe(payloadHash(Buffer.from(b)))
    expect(Number.isSafeInteger(payloadHash(b))).toBe(true)
    expect(payloadHash(Buffer.alloc(0))).toBe(payloadHash(new Uint8Array(0)))
  })

  it('separates payloads that differ in one bit, and 200k random payloads without a collision', () => {
    const base = crypto.randomBytes(120)
    const seen = new Set<number>([payloadHash(base)])
    for (let i = 0; i < base.length * 8; i++) {
      const flipped = Buffer.from(base)
      flipped[i >> 3] = (flipped[i >> 3] as number) ^ (1 << (i & 7))
      seen.add(payloadHash(flipped))
    }
    expect(seen.size).toBe(base.length * 8 + 1)
    const random = new Set<number>()
    for (let i = 0; i < 200_000; i++) random.add(payloadHash(crypto.randomBytes(64)))
    expect(random.size).toBe(200_000)
  })
})

describe('SeqWindow', () => {
  it('knows a recorded (seq, hash) pair, not the same seq with other bytes, and forgets after 8 newer batches', () => {
    const w = new SeqWindow()
    w.record(7, 1, 111)
    expect(w.seen(7, 1, 111)).toBe(true)
    expect(w.seen(7, 1, 112)).toBe(false) // a reset device reusing seq 1 with new samples
    expect(w.seen(8, 1, 111)).toBe(false)
    for (let s = 2; s <= 9; s++) w.record(7, s, 100 + s)
    expect(w.seen(7, 1, 111)).toBe(false)
    expect(w.seen(7, 9, 109)).toBe(true)
  })
})
