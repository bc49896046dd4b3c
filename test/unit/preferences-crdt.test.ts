// The preferences CRDT and its clocks, as properties over random edits (fast-check): the merge is a join-semilattice
// (commutative, associative, idempotent), every order and duplication of the same edits converges to the per-field
// maximum, and a duplicate or older edit changes nothing. Stamps are drawn from a narrow range so that equal walls,
// equal counters and even equal stamps with different values (a device reusing a stamp) are common.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import {
  applyEntry,
  compareEntry,
  type Entry,
  entry,
  equalStates,
  type FieldValue,
  join,
  type PrefsMap,
  project,
  stateMessage,
} from '../../src/insights/preferences/crdt.js'
import { compareHlc, formatHlc, type Hlc, HlcClock, parseHlc } from '../../src/insights/preferences/hlc.js'

const NODES = ['phone-1', 'watch-1', 'web', 'Tablet_2']
const FIELDS = ['quietHours', 'timeZone', 'goals.steps', 'mutedRules.R6', 'mutedRules.R8', 'mutedRules.load_jump']

const hlcArb: fc.Arbitrary<Hlc> = fc.record({
  wall: fc.integer({ min: 1_764_061_200_000, max: 1_764_061_200_004 }),
  counter: fc.integer({ min: 0, max: 3 }),
  node: fc.constantFrom(...NODES),
})
const hhmm = fc
  .tuple(fc.integer({ min: 0, max: 23 }), fc.integer({ min: 0, max: 59 }))
  .map(([h, m]) => `${String(h).padStart(2, '0')}:${String(m).padStart(2, '0')}`)

function valueArb(field: string): fc.Arbitrary<FieldValue> {
  if (field === 'quietHours') return fc.option(fc.record({ start: hhmm, end: hhmm }), { nil: null })
  if (field === 'timeZone') return fc.constantFrom('Europe/Berlin', 'UTC', 'Asia/Tokyo', null)
  if (field === 'goals.steps') return fc.option(fc.integer({ min: 1, max: 100_000 }), { nil: null })
  return fc.boolean()
}

interface Edit {
  field: string
  e: Entry
}
const editArb: fc.Arbitrary<Edit> = fc
  .constantFrom(...FIELDS)
  .chain((field) => fc.record({ field: fc.constant(field), e: fc.tuple(valueArb(field), hlcArb) }))
  .map(({ field, e: [value, hlc] }) => ({ field, e: entry(value, hlc) }))
const editsArb = fc.array(editArb, { minLength: 1, maxLength: 40 })

function fold(edits: readonly Edit[]): Map<string, Entry> {
  const m = new Map<string, Entry>()
  for (const { field, e } of edits) applyEntry(m, field, e)
  return m
}

/** The expected result, computed without the merge: per field, the maximum of its edits. */
function perFieldMax(edits: readonly Edit[]): Map<string, Entry> {
  const m = new Map<string, Entry>()
  for (const field of FIELDS) {
    const mine = edits.filter((x) => x.field === field).map((x) => x.e)
    if (mine.length > 0) m.set(field, [...mine].sort(compareEntry)[mine.length - 1] as Entry)
  }
  return m
}

/** The edits delivered in a random order, some of them several times. */
const deliveryArb = editsArb.chain((edits) =>
  fc.tuple(
    fc.constant(edits),
    fc.shuffledSubarray(edits, { minLength: edits.length, maxLength: edits.length }),
    fc.array(fc.constantFrom(...edits), { maxLength: 20 }),
    fc.array(fc.nat(), { maxLength: 20 }),
  ),
)

function withDuplicates(order: Edit[], dups: Edit[], at: number[]): Edit[] {
  const out = [...order]
  for (const [i, d] of dups.entries()) out.splice((at[i] ?? 0) % (out.length + 1), 0, d)
  return out
}

describe('preferences CRDT (property tests)', () => {
  it('every order of arrival, with duplicates, converges to the per-field maximum', () => {
    fc.assert(
      fc.property(deliveryArb, ([edits, shuffled, dups, at]) => {
        const expected = perFieldMax(edits)
        expect(equalStates(fold(edits), expected)).toBe(true)
        expect(equalStates(fold(withDuplicates(shuffled, dups, at)), expected)).toBe(true)
        expect(stateMessage('u', fold(shuffled))).toEqual(stateMessage('u', expected))
      }),
      { numRuns: 500 },
    )
  })

  it('join is commutative, associative and idempotent', () => {
    fc.assert(
      fc.property(editsArb, editsArb, editsArb, (ea, eb, ec) => {
        const [a, b, c] = [fold(ea), fold(eb), fold(ec)]
        expect(equalStates(join(a, b), join(b, a))).toBe(true)
        expect(equalStates(join(join(a, b), c), join(a, join(b, c)))).toBe(true)
        expect(equalStates(join(a, a), a)).toBe(true)
        // The join of two devices' states is the state of all their edits together.
        expect(equalStates(join(a, b), fold([...ea, ...eb]))).toBe(true)
      }),
      { numRuns: 300 },
    )
  })

  it('a duplicate or older edit changes nothing; a newer one wins its field only', () => {
    fc.assert(
      fc.property(editsArb, editArb, (edits, late) => {
        const state = fold(edits)
        const before = new Map(state)
        const current = state.get(late.field)
        const won = applyEntry(state, late.field, late.e)
        expect(won).toBe(!current || compareEntry(late.e, current) > 0)
        for (const [f, e] of before) if (f !== late.field) expect(state.get(f)).toBe(e)
        if (!won) expect(equalStates(state, before)).toBe(true)
        // Merging any edit already merged is a no-op.
        for (const { field, e } of edits) expect(applyEntry(state, field, e)).toBe(false)
      }),
      { numRuns: 300 },
    )
  })

  it('two devices editing offline at once converge after exchanging states in either order', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), fc.constantFrom(...FIELDS), fc.integer({ min: 0, max: 5 })), {
          maxLength: 30,
        }),
        fc.integer({ min: -3, max: 3 }),
        (steps, skew) => {
          let t = 1_764_061_200_000
          const phone = new HlcClock('phone-1', () => t)
          const watch = new HlcClock('watch-1', () => t + skew) // the watch's clock is a little off
          const phoneEdits: Edit[] = []
          const watchEdits: Edit[] = []
          for (const [onPhone, field, dt] of steps) {
            t += dt
            const value: FieldValue = field.startsWith('mutedRules.')
              ? dt % 2 === 0
              : field === 'goals.steps'
                ? dt + 1
                : null
            if (onPhone) phoneEdits.push({ field, e: entry(value, phone.now()) })
            else watchEdits.push({ field, e: entry(value, watch.now()) })
          }
          const p = fold(phoneEdits)
          const w = fold(watchEdits)
          const phoneAfter = join(p, w)
          const watchAfter = join(w, p)
          expect(equalStates(phoneAfter, watchAfter)).toBe(true)
          expect(equalStates(phoneAfter, perFieldMax([...phoneEdits, ...watchEdits]))).toBe(true)
        },
      ),
      { numRuns: 300 },
    )
  })

  it('muting one rule on the phone and unmuting another on the watch both survive (one register per rule)', () => {
    const t = 1_764_061_200_000
    const before = fold([
      { field: 'mutedRules.R6', e: entry(false, { wall: t, counter: 0, node: 'phone-1' }) },
      { field: 'mutedRules.R8', e: entry(true, { wall: t, counter: 0, node: 'phone-1' }) },
    ])
    const phone = join(
      before,
      fold([{ field: 'mutedRules.R6', e: entry(true, { wall: t + 5, counter: 0, node: 'phone-1' }) }]),
    )
    const watch = join(
      before,
      fold([{ field: 'mutedRules.R8', e: entry(false, { wall: t + 3, counter: 0, node: 'watch-1' }) }]),
    )
    expect(project(join(phone, watch))).toEqual({ mutedRules: ['R6'] })
    expect(project(join(watch, phone))).toEqual({ mutedRules: ['R6'] })
  })

  it('project gives the reader shape; cleared fields (null) are absent', () => {
    const h = (n: number): Hlc => ({ wall: 1000 + n, counter: 0, node: 'phone-1' })
    const state: PrefsMap = fold([
      { field: 'quietHours', e: entry({ start: '22:00', end: '07:00' }, h(1)) },
      { field: 'timeZone', e: entry('Europe/Berlin', h(1)) },
      { field: 'goals.steps', e: entry(8000, h(1)) },
      { field: 'mutedRules.R8', e: entry(true, h(1)) },
      { field: 'mutedRules.R3', e: entry(true, h(1)) },
      { field: 'mutedRules.R6', e: entry(false, h(1)) },
    ])
    expect(project(state)).toEqual({
      quietHours: { start: '22:00', end: '07:00' },
      timeZone: 'Europe/Berlin',
      mutedRules: ['R3', 'R8'],
      goals: { steps: 8000 },
    })
    const cleared = join(state, fold([{ field: 'quietHours', e: entry(null, h(2)) }]))
    expect(project(cleared).quietHours).toBeUndefined()
    expect(stateMessage('alice', cleared).state['quietHours']).toBeNull()
    expect(stateMessage('alice', cleared).clock['quietHours']).toBe('1002:0:phone-1')
  })
})

describe('hybrid logical clock', () => {
  it('now() is strictly increasing and never behind physical time, even when the physical clock jumps back', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: -50, max: 50 }), { minLength: 1, maxLength: 200 }), (jumps) => {
        let pt = 1_764_061_200_000
        const clock = new HlcClock('phone-1', () => pt)
        let prev: Hlc | null = null
        for (const j of jumps) {
          pt += j
          const h = clock.now()
          expect(h.wall).toBeGreaterThanOrEqual(pt)
          if (prev) expect(compareHlc(h, prev)).toBe(1)
          prev = h
        }
      }),
    )
  })

  it('receive() is after both the local clock and the remote stamp', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.boolean(), hlcArb, fc.integer({ min: -3, max: 3 })), { maxLength: 100 }),
        (ops) => {
          let pt = 1_764_061_200_000
          const clock = new HlcClock('watch-1', () => pt)
          let prev = clock.now()
          for (const [isReceive, remote, dt] of ops) {
            pt += dt
            const h = isReceive ? clock.receive(remote) : clock.now()
            expect(compareHlc(h, prev)).toBe(1)
            if (isReceive) expect(compareHlc(h, remote)).toBe(1)
            prev = h
          }
        },
      ),
    )
  })

  it('parses what it formats, and refuses anything else', () => {
    fc.assert(
      fc.property(hlcArb, (h) => {
        expect(parseHlc(formatHlc(h))).toEqual(h)
      }),
    )
    for (const bad of ['', '1:2', '1:2:', 'a:0:phone', '1:0:pho ne', '1:-1:phone', '1:0:phone:x', `1:${2 ** 31}:p`]) {
      expect(parseHlc(bad)).toBeNull()
    }
    expect(parseHlc('99999999999999999:0:p')).toBeNull() // beyond Number.MAX_SAFE_INTEGER
  })

  it('orders by wall, then counter, then node', () => {
    const a = { wall: 1, counter: 9, node: 'z' }
    const b = { wall: 2, counter: 0, node: 'a' }
    const c = { wall: 2, counter: 0, node: 'b' }
    expect([c, b, a].sort(compareHlc)).toEqual([a, b, c])
    expect(compareHlc(c, { ...c })).toBe(0)
    expect(() => new HlcClock('bad node')).toThrow(/node id/)
  })
})
