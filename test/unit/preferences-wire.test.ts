// The users/{uid}/preferences wire format: what is accepted, how values are normalised, and the clear reason a
// message is refused whole.
import { describe, expect, it } from 'vitest'
import {
  canonicalTimeZone,
  MAX_EDITS_PER_MESSAGE,
  parsePreferencesMessage,
} from '../../src/insights/preferences/wire.js'

const NOW = 1_764_061_200_000
const HOUR = 3600_000
const msg = (o: unknown) => Buffer.from(JSON.stringify(o))
const parse = (o: unknown) => parsePreferencesMessage(typeof o === 'string' ? Buffer.from(o) : msg(o), NOW, HOUR)
const stamp = (node = 'phone-1', wall = NOW, counter = 0) => `${wall}:${counter}:${node}`

describe('preferences wire format', () => {
  it('accepts every field and normalises values', () => {
    const r = parse({
      node: 'phone-1',
      edits: [
        { field: 'quietHours', value: { end: '07:00', start: '22:00' }, hlc: stamp() },
        { field: 'timeZone', value: 'europe/berlin', hlc: stamp() },
        { field: 'goals.steps', value: 8000, hlc: stamp('phone-1', NOW, 1) },
        { field: 'mutedRules.R6', value: true, hlc: stamp() },
        { field: 'mutedRules.load_jump', value: false, hlc: stamp() },
        { field: 'goals.steps', value: null, hlc: stamp('phone-1', NOW - 5) },
      ],
    })
    expect(r.ok).toBe(true)
    if (!r.ok) return
    expect(r.entries.map((x) => [x.field, x.entry.value, x.entry.key])).toEqual([
      // Keys in a fixed order whatever the device sent: equal values give equal canonical JSON.
      ['quietHours', { start: '22:00', end: '07:00' }, '{"start":"22:00","end":"07:00"}'],
      ['timeZone', 'Europe/Berlin', '"Europe/Berlin"'],
      ['goals.steps', 8000, '8000'],
      ['mutedRules.R6', true, 'true'],
      ['mutedRules.load_jump', false, 'false'],
      ['goals.steps', null, 'null'],
    ])
    expect(r.entries[2]?.entry.hlc).toEqual({ wall: NOW, counter: 1, node: 'phone-1' })
  })

  it.each([
    ['{"node":', /not JSON/],
    [{ edits: [] }, /node/],
    [{ node: 'phone-1', edits: [] }, /edits/],
    [{ node: 'phone 1', edits: [{ field: 'timeZone', value: 'UTC', hlc: stamp() }] }, /node/],
    [
      { node: 'phone-1', edits: [{ field: 'bedtime', value: '22:00', hlc: stamp() }] },
      /edits\[0\]\.field: unknown field "bedtime"/,
    ],
    [{ node: 'phone-1', edits: [{ field: 'mutedRules.', value: true, hlc: stamp() }] }, /unknown field/],
    [{ node: 'phone-1', edits: [{ field: 'mutedRules.R 6', value: true, hlc: stamp() }] }, /unknown field/],
    [
      { node: 'phone-1', edits: [{ field: 'mutedRules.R6', value: 'yes', hlc: stamp() }] },
      /edits\[0\]\.value \(mutedRules\.R6\)/,
    ],
    [
      { node: 'phone-1', edits: [{ field: 'quietHours', value: { start: '24:00', end: '07:00' }, hlc: stamp() }] },
      /HH:MM/,
    ],
    [{ node: 'phone-1', edits: [{ field: 'quietHours', value: { start: '22:00' }, hlc: stamp() }] }, /end/],
    [
      {
        node: 'phone-1',
        edits: [{ field: 'quietHours', value: { start: '22:00', end: '07:00', x: 1 }, hlc: stamp() }],
      },
      /x/,
    ],
    [
      { node: 'phone-1', edits: [{ field: 'timeZone', value: 'Mars/Olympus_Mons', hlc: stamp() }] },
      /not an IANA time zone/,
    ],
    [{ node: 'phone-1', edits: [{ field: 'timeZone', value: '+01:00', hlc: stamp() }] }, /not an IANA time zone/],
    [{ node: 'phone-1', edits: [{ field: 'goals.steps', value: 2.5, hlc: stamp() }] }, /goals\.steps/],
    [{ node: 'phone-1', edits: [{ field: 'goals.steps', value: 0, hlc: stamp() }] }, /goals\.steps/],
    [{ node: 'phone-1', edits: [{ field: 'timeZone', hlc: stamp() }] }, /value/],
    [{ node: 'phone-1', edits: [{ field: 'timeZone', value: 'UTC', hlc: 'yesterday' }] }, /edits\[0\]\.hlc: expected/],
    [{ node: 'phone-1', edits: [{ field: 'timeZone', value: 'UTC', hlc: stamp('watch-1') }] }, /stamped by watch-1/],
  ])('refuses %j as bad_payload (%s)', (input, detail) => {
    const r = parse(input)
    expect(r.ok).toBe(false)
    if (r.ok) return
    expect(r.reason).toBe('bad_payload')
    expect(r.detail).toMatch(detail)
  })

  it('refuses a message whole when one stamp is more than the bound ahead of the server clock', () => {
    const edits = [
      { field: 'timeZone', value: 'UTC', hlc: stamp() },
      { field: 'goals.steps', value: 9000, hlc: stamp('phone-1', NOW + HOUR + 1) },
    ]
    const r = parse({ node: 'phone-1', edits })
    expect(r).toEqual({
      ok: false,
      reason: 'clock_ahead',
      node: 'phone-1',
      detail: `edits[1].hlc: wall time ${NOW + HOUR + 1} is ${HOUR + 1} ms ahead of the server (limit ${HOUR} ms)`,
    })
    // Exactly at the bound is still accepted.
    expect(
      parse({ node: 'phone-1', edits: [{ field: 'timeZone', value: 'UTC', hlc: stamp('phone-1', NOW + HOUR) }] }).ok,
    ).toBe(true)
  })

  it('bounds the edits per message', () => {
    const edits = Array.from({ length: MAX_EDITS_PER_MESSAGE + 1 }, (_, i) => ({
      field: `mutedRules.R${i}`,
      value: true,
      hlc: stamp(),
    }))
    expect(parse({ node: 'phone-1', edits: edits.slice(1) }).ok).toBe(true)
    expect(parse({ node: 'phone-1', edits }).ok).toBe(false)
  })

  it('knows IANA zones by their canonical names', () => {
    expect(canonicalTimeZone('UTC')).toBe('UTC')
    expect(canonicalTimeZone('America/Argentina/Buenos_Aires')).toBe('America/Argentina/Buenos_Aires')
    expect(canonicalTimeZone('Etc/GMT+1')).toBe('Etc/GMT+1')
    expect(canonicalTimeZone('Asia/Kolkata')).toBe('Asia/Kolkata')
    expect(canonicalTimeZone('Asia/Calcutta')).toBe('Asia/Calcutta')
    expect(canonicalTimeZone('Europe/Berlinn')).toBeNull()
    expect(canonicalTimeZone('')).toBeNull()
  })
})
