import { describe, expect, it } from 'vitest'
import { pushCompact } from '../../src/outputs/engine.js'

describe('output windows keep one point per series per second', () => {
  it('a newer sample in the same second replaces the last point; a new second appends', () => {
    const xs: { t: number; hr: number }[] = []
    for (let i = 0; i < 200; i++) pushCompact(xs, { t: 10_000 + i * 10, hr: 100 + i }) // 200 Hz for 2 s
    expect(xs).toEqual([
      { t: 10_990, hr: 199 },
      { t: 11_990, hr: 299 },
    ])
  })

  it('late samples are inserted in time order, exact duplicates skipped', () => {
    const xs: { t: number; hr: number }[] = []
    pushCompact(xs, { t: 3_000, hr: 1 })
    pushCompact(xs, { t: 5_000, hr: 3 })
    pushCompact(xs, { t: 4_000, hr: 2 })
    pushCompact(xs, { t: 4_000, hr: 9 })
    expect(xs.map((x) => x.hr)).toEqual([1, 2, 3])
  })
})
