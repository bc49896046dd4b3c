import { randomBytes, randomInt } from 'node:crypto'
import { encode } from 'cbor-x'
import { describe, expect, it } from 'vitest'
import { DecodeError, decodeBatch } from '../../src/pipeline/decode.js'
import { METRICS } from '../../src/pipeline/types.js'
import {
  BOUNDS,
  DEFAULT_RULES,
  type DeviceTrack,
  haversineMeters,
  MAX_SAMPLE_KEYS,
  type ValidationRules,
  validateBatch,
} from '../../src/pipeline/validate.js'

const NOW = 1_764_061_200_000 // 2025-11-25T09:00:00Z
const RULES: ValidationRules = { ...DEFAULT_RULES, now: NOW }
const LIMITS = { maxSamples: 2000 }

// ---- helpers ----

/** CBOR head (RFC 8949 §3): major type + argument, shortest form. */
/**
 * CPU milliseconds (this process, user + system) fn takes: its cost, which a loaded machine does not inflate the way
 * it does wall-clock time (a descheduled test would fail a wall-clock bound with the code unchanged).
 */
function cpuMs<T>(fn: () => T): { value: T; ms: number } {
  const before = process.cpuUsage()
  const value = fn()
  const used = process.cpuUsage(before)
  return { value, ms: (used.user + used.system) / 1000 }
}

function head(major: number, n: number): Buffer {
  if (n < 24) return Buffer.from([(major << 5) | n])
  if (n < 0x100) return Buffer.from([(major << 5) | 24, n])
  if (n < 0x10000) {
    const b = Buffer.alloc(3)
    b[0] = (major << 5) | 25
    b.writeUInt16BE(n, 1)
    return b
  }
  if (n < 2 ** 32) {
    const b = Buffer.alloc(5)
    b[0] = (major << 5) | 26
    b.writeUInt32BE(n, 1)
    return b
  }
  const b = Buffer.alloc(9)
  b[0] = (major << 5) | 27
  b.writeBigUInt64BE(BigInt(n), 1)
  return b
}
const text = (s: string): Buffer => Buffer.concat([head(3, Buffer.byteLength(s)), Buffer.from(s)])
const cat = (...parts: Buffer[]): Buffer => Buffer.concat(parts)
/** `{ "seq": 1, "samples": <rest> }` with the samples value given as raw CBOR. */
const envelopeWith = (samplesCbor: Buffer): Buffer =>
  cat(head(5, 2), text('seq'), head(0, 1), text('samples'), samplesCbor)

function decodeError(payload: Buffer): DecodeError {
  try {
    decodeBatch(payload, LIMITS)
  } catch (err) {
    if (err instanceof DecodeError) return err
    throw new Error(`threw a non-DecodeError: ${String(err)}`)
  }
  throw new Error('expected a DecodeError, decoded fine')
}
const reasonOf = (payload: Buffer): string => decodeError(payload).reason
const json = (v: unknown): Buffer => Buffer.from(JSON.stringify(v))

/** Validate samples given as JS values (through a CBOR round trip, so the decoder's value types are exercised). */
function run(samples: unknown[], track: DeviceTrack = {}, rules: ValidationRules = RULES) {
  return validateBatch(decodeBatch(encode({ seq: 7, samples }), LIMITS), rules, track)
}
const reasons = (r: { rejections: { reason: string; field: string | null; index: number | null }[] }) =>
  r.rejections.map((x) => `${x.reason}:${x.field}@${x.index}`)

// ---- decode ----

describe('decodeBatch: formats', () => {
  const batch = { seq: 1841, samples: [{ t: NOW, hr: 142 }] }

  it('decodes JSON', () => {
    const d = decodeBatch(json(batch), LIMITS)
    expect(d).toEqual({ seq: 1841, samples: [{ t: NOW, hr: 142 }], format: 'json' })
  })

  it('decodes whitespace-prefixed JSON', () => {
    const d = decodeBatch(Buffer.from(` \t\r\n  ${JSON.stringify(batch)}\n`), LIMITS)
    expect(d.format).toBe('json')
    expect(d.seq).toBe(1841)
  })

  it('decodes CBOR (cbor-x encode)', () => {
    const d = decodeBatch(encode(batch), LIMITS)
    expect(d).toEqual({ seq: 1841, samples: [{ t: NOW, hr: 142 }], format: 'cbor' })
  })

  it('decodes a hand-built CBOR map with a fixmap head, and an indefinite-length (0xBF) map', () => {
    const sample = cat(head(5, 2), text('t'), head(0, NOW), text('hr'), head(0, 142))
    const fixed = envelopeWith(cat(head(4, 1), sample))
    expect(fixed[0]).toBe(0xa2)
    expect(decodeBatch(fixed, LIMITS).samples).toEqual([{ t: NOW, hr: 142 }])
    const indefinite = cat(
      Buffer.from([0xbf]),
      text('seq'),
      head(0, 3),
      text('samples'),
      head(4, 1),
      sample,
      Buffer.from([0xff]),
    )
    expect(decodeBatch(indefinite, LIMITS)).toMatchObject({ seq: 3, format: 'cbor' })
  })

  it('decodes the CBOR bytes shown in docs/readings.md', () => {
    const doc = Buffer.from('a2637365711907316773616d706c657381a261741b0000019aba3dbe80626872188e', 'hex')
    const r = validateBatch(decodeBatch(doc, LIMITS), RULES, {})
    expect(r).toMatchObject({ seq: 1841, scalars: [{ metric: METRICS.hr, t: NOW, value: 142 }], rejections: [] })
  })

  it('reads 8-byte CBOR integers (firmware encoders emit epoch ms that way) as numbers', () => {
    // head(0, NOW) is the 0x1b form since NOW > 2^32
    const p = envelopeWith(
      cat(head(4, 1), head(5, 2), text('t'), head(0, NOW), text('steps'), Buffer.from([0x1b, 0, 0, 0, 0, 0, 0, 0, 12])),
    )
    const r = validateBatch(decodeBatch(p, LIMITS), RULES, {})
    expect(r.rejections).toEqual([])
    expect(r.scalars).toEqual([{ metric: METRICS.steps, t: NOW, value: 12 }])
  })

  it('unknown_format: empty, arrays, strings, CBOR non-maps, BOM, whitespace only', () => {
    expect(reasonOf(Buffer.alloc(0))).toBe('unknown_format')
    expect(reasonOf(Buffer.from('[1,2]'))).toBe('unknown_format')
    expect(reasonOf(Buffer.from('  "x"'))).toBe('unknown_format')
    expect(reasonOf(Buffer.from('   '))).toBe('unknown_format')
    expect(reasonOf(Buffer.from('\ufeff{"seq":1}'))).toBe('unknown_format')
    expect(reasonOf(encode([1, 2]))).toBe('unknown_format')
    expect(reasonOf(encode(42))).toBe('unknown_format')
    expect(reasonOf(Buffer.from([0xd9, 0xd9, 0xf7, 0xa0]))).toBe('unknown_format') // self-described CBOR tag first
  })

  it('malformed_json', () => {
    expect(reasonOf(Buffer.from('{"seq":1,'))).toBe('malformed_json')
    expect(reasonOf(Buffer.from('{"seq":1} trailing'))).toBe('malformed_json')
    expect(reasonOf(Buffer.from("{'seq':1}"))).toBe('malformed_json')
  })

  it('malformed_cbor: truncated, trailing bytes, bad tokens', () => {
    const good = encode({ seq: 1, samples: [{ t: NOW, hr: 100 }] })
    expect(reasonOf(good.subarray(0, good.length - 1))).toBe('malformed_cbor')
    expect(reasonOf(cat(good, Buffer.from([0x00])))).toBe('malformed_cbor')
    expect(reasonOf(Buffer.from([0xa1, 0xff]))).toBe('malformed_cbor') // break outside indefinite item
    expect(reasonOf(Buffer.from([0xa1, 0x1c, 0x00]))).toBe('malformed_cbor') // reserved additional info
  })

  it('not_an_object: never reachable from a JSON "{" or a CBOR map head, so only samples carry it', () => {
    // The envelope check is defensive; the per-sample reason of the same name is covered under validateBatch.
    expect(decodeBatch(Buffer.from('{"seq":0,"samples":[1]}'), LIMITS).format).toBe('json')
  })

  it('bad_seq: missing, negative, fractional, string, above 2^53-1, bigint, NaN', () => {
    const s = [{ t: NOW, hr: 100 }]
    expect(reasonOf(json({ samples: s }))).toBe('bad_seq')
    expect(reasonOf(json({ seq: -1, samples: s }))).toBe('bad_seq')
    expect(reasonOf(json({ seq: 1.5, samples: s }))).toBe('bad_seq')
    expect(reasonOf(json({ seq: '1', samples: s }))).toBe('bad_seq')
    expect(reasonOf(Buffer.from('{"seq":9007199254740992,"samples":[]}'))).toBe('bad_seq')
    expect(reasonOf(encode({ seq: 2n ** 70n, samples: s }))).toBe('bad_seq')
    expect(reasonOf(encode({ seq: Number.NaN, samples: s }))).toBe('bad_seq')
    expect(decodeBatch(json({ seq: Number.MAX_SAFE_INTEGER, samples: s }), LIMITS).seq).toBe(Number.MAX_SAFE_INTEGER)
    expect(decodeBatch(json({ seq: 0, samples: s }), LIMITS).seq).toBe(0)
  })

  it('bad_samples: missing, object, string, typed array, Set', () => {
    expect(reasonOf(json({ seq: 1 }))).toBe('bad_samples')
    expect(reasonOf(json({ seq: 1, samples: { 0: { t: NOW } } }))).toBe('bad_samples')
    expect(reasonOf(json({ seq: 1, samples: 'x' }))).toBe('bad_samples')
    expect(reasonOf(encode({ seq: 1, samples: new Float64Array([1, 2]) }))).toBe('bad_samples')
    expect(reasonOf(envelopeWith(cat(Buffer.from([0xd9, 0x01, 0x02]), head(4, 1), head(0, 1))))).toBe('bad_samples') // tag 258 Set
  })

  it('empty_batch', () => {
    expect(reasonOf(json({ seq: 1, samples: [] }))).toBe('empty_batch')
    expect(reasonOf(encode({ seq: 1, samples: [] }))).toBe('empty_batch')
  })

  it('too_many_samples (JSON and CBOR), exactly maxSamples passes', () => {
    const many = Array.from({ length: 2001 }, () => 0)
    expect(reasonOf(json({ seq: 1, samples: many }))).toBe('too_many_samples')
    expect(reasonOf(encode({ seq: 1, samples: many }))).toBe('too_many_samples')
    expect(decodeBatch(encode({ seq: 1, samples: many.slice(1) }), LIMITS).samples).toHaveLength(2000)
  })

  it('a CBOR array head declaring 10^9 (and 2^32-1, 2^53) elements with no body fails fast without allocating', () => {
    for (const n of [1e9, 2 ** 32 - 1, 2 ** 53]) {
      const { value: err, ms } = cpuMs(() => decodeError(envelopeWith(head(4, n))))
      expect(err.reason).toBe('malformed_cbor')
      expect(ms).toBeLessThan(100)
    }
    // and a declared-huge sample map inside a short array
    expect(reasonOf(envelopeWith(cat(head(4, 1), head(5, 1e9))))).toBe('malformed_cbor')
  })

  it('1 MB of garbage fails fast in every format branch', () => {
    for (const first of [0xa5, 0xbf, 0xb9, 0x7b, 0x20, 0x00, 0xff]) {
      for (let round = 0; round < 3; round++) {
        const buf = randomBytes(1 << 20)
        buf[0] = first
        const { value: err, ms } = cpuMs(() => decodeError(buf))
        expect(err).toBeInstanceOf(DecodeError)
        expect(ms).toBeLessThan(500)
      }
    }
    const spaces = Buffer.alloc(1 << 20, 0x20)
    expect(reasonOf(spaces)).toBe('unknown_format')
  })

  it('deep nesting is a DecodeError, not a stack overflow escaping', () => {
    const deepCbor = cat(Buffer.from([0xa1]), text('x'), Buffer.alloc(200_000, 0x81), Buffer.from([0x00]))
    expect(decodeError(deepCbor)).toBeInstanceOf(DecodeError)
    const deepJson = Buffer.from(`{"x":${'['.repeat(200_000)}${']'.repeat(200_000)}}`)
    expect(decodeError(deepJson)).toBeInstanceOf(DecodeError)
  })

  it('refuses CBOR value sharing that repeats one sample object (amplification), pairwise and Set paths', () => {
    const sample = cat(head(5, 2), text('t'), head(0, NOW), text('hr'), head(0, 100))
    const shareable = cat(Buffer.from([0xd8, 0x1c]), sample) // tag 28
    const ref0 = Buffer.from([0xd8, 0x1d, 0x00]) // tag 29 → reference 0
    expect(decodeError(envelopeWith(cat(head(4, 3), shareable, ref0, ref0))).message).toMatch(/more than once/)
    const many = [shareable, ...Array.from({ length: 40 }, () => ref0)]
    expect(reasonOf(envelopeWith(cat(head(4, many.length), ...many)))).toBe('malformed_cbor')
    // a sample that is (a reference to) the samples array itself is merely not an object
    const cyclic = envelopeWith(cat(Buffer.from([0xd8, 0x1c]), head(4, 1), ref0))
    const r = validateBatch(decodeBatch(cyclic, LIMITS), RULES, {})
    expect(reasons(r)).toEqual(['not_an_object:null@0'])
  })
})

// ---- validate ----

describe('validateBatch', () => {
  it('accepts a multi-metric sample as separate scalars, plus a position', () => {
    const r = run([
      { t: NOW, hr: 142, spo2: 97 },
      { t: NOW, lat: 52.5163, lon: 13.3777, alt: 34.0, acc: 4.8 },
      { t: NOW + 1000, steps: 3, cadence: 172, skin_temp: 33.1, resp: 18 },
    ])
    expect(r.seq).toBe(7)
    expect(r.rejections).toEqual([])
    expect(r.scalars).toEqual([
      { metric: METRICS.hr, t: NOW, value: 142 },
      { metric: METRICS.spo2, t: NOW, value: 97 },
      { metric: METRICS.steps, t: NOW + 1000, value: 3 },
      { metric: METRICS.cadence, t: NOW + 1000, value: 172 },
      { metric: METRICS.skin_temp, t: NOW + 1000, value: 33.1 },
      { metric: METRICS.resp, t: NOW + 1000, value: 18 },
    ])
    expect(r.positions).toEqual([{ t: NOW, lat: 52.5163, lon: 13.3777, alt: 34, acc: 4.8 }])
    expect(r.inBatchDuplicates).toBe(0)
  })

  it('same result from JSON', () => {
    const samples = [
      { t: NOW, hr: 142, spo2: 97 },
      { t: NOW, lat: 1, lon: 2 },
    ]
    const a = validateBatch(decodeBatch(json({ seq: 7, samples }), LIMITS), RULES, {})
    const b = run(samples)
    expect(a).toEqual(b)
    expect(a.positions[0]).toEqual({ t: NOW, lat: 1, lon: 2, alt: null, acc: null })
  })

  it('a sample may carry a position and scalars together', () => {
    const r = run([{ t: NOW, hr: 150, lat: 10, lon: 20, acc: 3 }])
    expect(r.scalars).toHaveLength(1)
    expect(r.positions).toHaveLength(1)
  })

  it('out_of_range: every bound, inclusive edges accepted, just outside refused', () => {
    for (const [name, b] of Object.entries(BOUNDS)) {
      const step = b.integer ? 1 : 0.001
      const pos = name === 'lat' || name === 'lon' || name === 'alt' || name === 'acc'
      const base = pos ? { lat: 0, lon: 0 } : {}
      // one batch (and fresh track) per value, so the position speed check stays out of it
      expect(run([{ t: NOW, ...base, [name]: b.min }]).rejections, name).toEqual([])
      expect(run([{ t: NOW, ...base, [name]: name === 'acc' ? 200 : b.max }]).rejections, name).toEqual([])
      expect(reasons(run([{ t: NOW, ...base, [name]: b.min - step }])), name).toEqual([`out_of_range:${name}@0`])
      expect(reasons(run([{ t: NOW, ...base, [name]: b.max + step }])), name).toEqual([`out_of_range:${name}@0`])
    }
  })

  it('spec bounds: hr 25–250, spo2 50–100, steps integer 0–1000', () => {
    expect(BOUNDS['hr']).toEqual({ min: 25, max: 250 })
    expect(BOUNDS['spo2']).toEqual({ min: 50, max: 100 })
    expect(BOUNDS['steps']).toEqual({ min: 0, max: 1000, integer: true })
    expect(reasons(run([{ t: NOW, hr: 24 }]))).toEqual(['out_of_range:hr@0'])
    expect(reasons(run([{ t: NOW, hr: 251 }]))).toEqual(['out_of_range:hr@0'])
  })

  it('wrong_type: strings, booleans, null, objects, arrays, bigint, Date, tags, typed arrays, non-integer steps', () => {
    const values: unknown[] = ['140', true, null, { v: 1 }, [140], 2n ** 70n, new Date(NOW), new Uint8Array([1])]
    for (const v of values) {
      expect(reasons(run([{ t: NOW, hr: v }])), String(v)).toEqual(['wrong_type:hr@0'])
    }
    expect(reasons(run([{ t: NOW, steps: 2.5 }]))).toEqual(['wrong_type:steps@0'])
    // an unregistered CBOR tag → cbor-x Tag object
    const tagged = envelopeWith(
      cat(head(4, 1), head(5, 2), text('t'), head(0, NOW), text('hr'), Buffer.from([0xd9, 0x03, 0xe8]), head(0, 1)),
    )
    expect(reasons(validateBatch(decodeBatch(tagged, LIMITS), RULES, {}))).toEqual(['wrong_type:hr@0'])
    // JSON objects as values
    const j = validateBatch(
      decodeBatch(json({ seq: 1, samples: [{ t: NOW, spo2: { value: 97 } }] }), LIMITS),
      RULES,
      {},
    )
    expect(reasons(j)).toEqual(['wrong_type:spo2@0'])
  })

  it('wrong_type: NaN and ±Infinity through the CBOR float path (JSON can only overflow to Infinity)', () => {
    for (const v of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      const payload = encode({ seq: 1, samples: [{ t: NOW, hr: v, spo2: 97 }] })
      const r = validateBatch(decodeBatch(payload, LIMITS), RULES, {})
      expect(reasons(r), String(v)).toEqual(['wrong_type:hr@0'])
      expect(r.scalars).toEqual([{ metric: METRICS.spo2, t: NOW, value: 97 }])
    }
    // half-precision NaN / Infinity (0xf9 7e00, 0xf9 7c00)
    for (const f16 of [
      [0xf9, 0x7e, 0x00],
      [0xf9, 0x7c, 0x00],
    ]) {
      const p = envelopeWith(cat(head(4, 1), head(5, 2), text('t'), head(0, NOW), text('lat'), Buffer.from(f16)))
      const r = validateBatch(decodeBatch(p, LIMITS), RULES, {})
      expect(reasons(r)).toEqual(['missing_field:lon@0', 'wrong_type:lat@0'])
    }
    const overflow = Buffer.from(`{"seq":1,"samples":[{"t":${NOW},"hr":1e999}]}`)
    expect(reasons(validateBatch(decodeBatch(overflow, LIMITS), RULES, {}))).toEqual(['wrong_type:hr@0'])
  })

  it('bad_timestamp: missing, string, fractional, bigint, NaN, unsafe; one rejection for the whole sample', () => {
    const bad: unknown[] = [undefined, String(NOW), NOW + 0.5, 2n ** 70n, Number.NaN, 2 ** 60, null, new Date(NOW)]
    for (const t of bad) {
      const s = t === undefined ? { hr: 100, spo2: 99 } : { t, hr: 100, spo2: 99, lat: 1, lon: 1 }
      const r = run([s])
      expect(reasons(r), String(t)).toEqual(['bad_timestamp:t@0'])
      expect(r.scalars).toEqual([])
      expect(r.positions).toEqual([])
    }
  })

  it('future_timestamp and too_old, with the window edges accepted', () => {
    const skew = DEFAULT_RULES.maxFutureSkewMs
    const win = DEFAULT_RULES.lateWindowMs
    expect(skew).toBe(300_000)
    expect(win).toBe(7 * 86_400_000)
    const r = run([
      { t: NOW + skew, hr: 100 },
      { t: NOW + skew + 1, hr: 100, spo2: 99 },
      { t: NOW - win, hr: 100 },
      { t: NOW - win - 1, hr: 100, spo2: 99 },
    ])
    expect(reasons(r)).toEqual(['future_timestamp:t@1', 'too_old:t@3'])
    expect(r.scalars.map((s) => s.t)).toEqual([NOW + skew, NOW - win])
  })

  it('not_an_object samples: numbers, strings, arrays, null, Map (tag 259), Date', () => {
    const r = run([1, 'x', [NOW, 100], null, new Date(NOW), { t: NOW, hr: 100 }])
    expect(reasons(r)).toEqual([0, 1, 2, 3, 4].map((i) => `not_an_object:null@${i}`))
    expect(r.scalars).toHaveLength(1)
    const mapSample = envelopeWith(
      cat(head(4, 1), Buffer.from([0xd9, 0x01, 0x03]), head(5, 1), text('t'), head(0, NOW)),
    )
    expect(reasons(validateBatch(decodeBatch(mapSample, LIMITS), RULES, {}))).toEqual(['not_an_object:null@0'])
  })

  it('unknown_field: one per key, known metrics of the sample still accepted; long names cut', () => {
    const long = 'x'.repeat(500)
    const r = run([{ t: NOW, hr: 100, hrv: 55, mood: 'ok', [long]: 1 }])
    expect(reasons(r)).toEqual(['unknown_field:hrv@0', 'unknown_field:mood@0', `unknown_field:${'x'.repeat(64)}@0`])
    expect(r.scalars).toEqual([{ metric: METRICS.hr, t: NOW, value: 100 }])
    // __proto__ keys neither pollute nor get lost
    const j = validateBatch(
      decodeBatch(Buffer.from(`{"seq":1,"samples":[{"t":${NOW},"__proto__":{"hr":1}}]}`), LIMITS),
      RULES,
      {},
    )
    expect(reasons(j)).toEqual(['unknown_field:__proto__@0'])
  })

  it('missing_field: lat without lon, lon without lat, alt/acc alone', () => {
    expect(reasons(run([{ t: NOW, lat: 1 }]))).toEqual(['missing_field:lon@0'])
    expect(reasons(run([{ t: NOW, lon: 1 }]))).toEqual(['missing_field:lat@0'])
    expect(reasons(run([{ t: NOW, alt: 30, hr: 90 }]))).toEqual(['missing_field:lat@0', 'missing_field:lon@0'])
    expect(run([{ t: NOW, alt: 30, hr: 90 }]).scalars).toHaveLength(1)
  })

  it('empty_sample and too_many_fields', () => {
    expect(reasons(run([{ t: NOW }]))).toEqual(['empty_sample:null@0'])
    const wide: Record<string, number> = { t: NOW, hr: 100 }
    for (let k = 0; k < MAX_SAMPLE_KEYS; k++) wide[`k${k}`] = k
    const r = run([wide, { t: NOW + 1, hr: 101 }])
    expect(reasons(r)).toEqual(['too_many_fields:null@0'])
    expect(r.scalars).toEqual([{ metric: METRICS.hr, t: NOW + 1, value: 101 }])
  })

  it('poor_accuracy above 200 m; bad alt/acc refuse the position with one rejection per bad field', () => {
    expect(reasons(run([{ t: NOW, lat: 1, lon: 1, acc: 200.5 }]))).toEqual(['poor_accuracy:acc@0'])
    const r = run([{ t: NOW, lat: 91, lon: 1, alt: 'high', acc: -1, hr: 120 }])
    expect(reasons(r)).toEqual(['out_of_range:lat@0', 'wrong_type:alt@0', 'out_of_range:acc@0'])
    expect(r.positions).toEqual([])
    expect(r.scalars).toHaveLength(1)
    expect(reasons(run([{ t: NOW, lat: 1, lon: 1, alt: null }]))).toEqual(['wrong_type:alt@0'])
  })

  it('a mixed batch keeps the valid samples', () => {
    const r = run([
      { t: NOW, hr: 140 },
      { t: NOW + 1000, hr: 300 },
      'garbage',
      { t: NOW + 2000, hr: 141, spo2: 20 },
      { t: NOW + 10 * 60_000, hr: 141 },
      { t: NOW + 3000, hr: 142, foo: 1 },
      { t: NOW + 3000, lat: 52.5, lon: 13.4 },
    ])
    expect(reasons(r)).toEqual([
      'out_of_range:hr@1',
      'not_an_object:null@2',
      'out_of_range:spo2@3',
      'future_timestamp:t@4',
      'unknown_field:foo@5',
    ])
    expect(r.scalars.map((s) => s.value)).toEqual([140, 141, 142])
    expect(r.positions).toHaveLength(1)
    expect(r.rejections.every((x) => x.seq === 7)).toBe(true)
  })

  it('counts in-batch duplicates (metric, t): keeps the first, drops later ones silently', () => {
    const r = run([
      { t: NOW, hr: 140 },
      { t: NOW, hr: 141 }, // dup
      { t: NOW, hr: 142, spo2: 97 }, // hr dup, spo2 new
      { t: NOW + 1000, hr: 150 },
      { t: NOW, hr: 143 }, // out of order, dup
      { t: NOW - 1000, hr: 130 }, // out of order, new
      { t: NOW - 1000, hr: 131 }, // dup
      { t: NOW + 1000, spo2: 96 },
      { t: NOW + 1000, spo2: 95 }, // dup
    ])
    expect(r.rejections).toEqual([])
    expect(r.inBatchDuplicates).toBe(5)
    expect(r.scalars.map((s) => `${s.metric}:${s.t - NOW}:${s.value}`)).toEqual([
      '1:0:140',
      '2:0:97',
      '1:1000:150',
      '1:-1000:130',
      '2:1000:96',
    ])
  })

  it('a refused reading does not count as the first of its identity', () => {
    const r = run([
      { t: NOW, hr: 10 },
      { t: NOW, hr: 100 },
    ])
    expect(reasons(r)).toEqual(['out_of_range:hr@0'])
    expect(r.scalars).toEqual([{ metric: METRICS.hr, t: NOW, value: 100 }])
    expect(r.inBatchDuplicates).toBe(0)
  })

  it('duplicate positions (same t) in a batch are dropped and counted', () => {
    const r = run([
      { t: NOW, lat: 52.5, lon: 13.4 },
      { t: NOW, lat: 52.5001, lon: 13.4 },
    ])
    expect(r.positions).toEqual([{ t: NOW, lat: 52.5, lon: 13.4, alt: null, acc: null }])
    expect(r.inBatchDuplicates).toBe(1)
  })

  it('haversine: 1° of latitude ≈ 111.2 km; same point = 0', () => {
    expect(haversineMeters(0, 0, 1, 0)).toBeCloseTo(111_195, -1)
    expect(haversineMeters(52.5, 13.4, 52.5, 13.4)).toBe(0)
    expect(haversineMeters(0, 179.9, 0, -179.9)).toBeCloseTo(22_239, -1)
  })

  it('implausible_speed within a batch, processed in ascending t regardless of sample order', () => {
    const lat0 = 52.5
    const north = (m: number) => lat0 + m / 111_195 // metres north of lat0
    const r = run([
      { t: NOW + 20_000, lat: north(200), lon: 13.4 }, // 200 m in 10 s after the 2nd: 20 m/s → refused
      { t: NOW + 10_000, lat: north(0), lon: 13.4 },
      { t: NOW, lat: north(-100), lon: 13.4 }, // first in time; 100 m in 10 s to the next: 10 m/s ok
      { t: NOW + 30_000, lat: north(100), lon: 13.4 }, // 100 m in 20 s from the 2nd: 5 m/s ok
    ])
    expect(reasons(r)).toEqual(['implausible_speed:lat@0'])
    expect(r.positions.map((p) => p.t - NOW)).toEqual([0, 10_000, 30_000])
  })

  it('speed check across batches through the same track; late points pass and do not move lastPos back', () => {
    const track: DeviceTrack = {}
    const north = (m: number) => 52.5 + m / 111_195
    run([{ t: NOW, lat: north(0), lon: 13.4 }], track)
    expect(track.lastPos).toEqual({ t: NOW, lat: north(0), lon: 13.4 })

    // 1 km in 1 s: refused; lastPos stays
    const r2 = run([{ t: NOW + 1000, lat: north(1000), lon: 13.4 }], track)
    expect(reasons(r2)).toEqual(['implausible_speed:lat@0'])
    expect(track.lastPos?.t).toBe(NOW)

    // 1 km in 200 s = 5 m/s: accepted; a late point 5 km away passes without a check
    const r3 = run(
      [
        { t: NOW + 200_000, lat: north(1000), lon: 13.4 },
        { t: NOW - 60_000, lat: north(5000), lon: 13.4 },
      ],
      track,
    )
    expect(r3.rejections).toEqual([])
    expect(r3.positions).toHaveLength(2)
    expect(track.lastPos).toEqual({ t: NOW + 200_000, lat: north(1000), lon: 13.4 })

    // a batch entirely older than lastPos: accepted, lastPos unchanged; same-t redelivery also accepted (storage dedupes)
    const r4 = run(
      [
        { t: NOW + 100_000, lat: 0, lon: 0 },
        { t: NOW + 200_000, lat: north(1000), lon: 13.4 },
      ],
      track,
    )
    expect(r4.rejections).toEqual([])
    expect(track.lastPos?.t).toBe(NOW + 200_000)
  })

  it('rejects nonsensical rules loudly', () => {
    expect(() => run([{ t: NOW, hr: 100 }], {}, { ...RULES, now: Number.NaN })).toThrow(RangeError)
  })
})

// ---- fuzz ----

describe('fuzz', () => {
  const valid = encode({
    seq: 12,
    samples: [
      { t: NOW, hr: 142, spo2: 97 },
      { t: NOW, lat: 52.5163, lon: 13.3777, alt: 34.0, acc: 4.8 },
      { t: NOW + 1000, steps: 3 },
      { t: NOW + 2000, hr: 143, skin_temp: 33.5 },
    ],
  })
  const validJson = json({
    seq: 12,
    samples: [
      { t: NOW, hr: 142 },
      { t: NOW, lat: 52.5, lon: 13.4 },
    ],
  })

  function mutate(src: Buffer): Buffer {
    const b = Buffer.from(src)
    switch (randomInt(6)) {
      case 0: // flip some bytes
        for (let k = randomInt(1, 6); k > 0; k--) b[randomInt(b.length)] = randomInt(256)
        return b
      case 1: // truncate
        return b.subarray(0, randomInt(b.length))
      case 2: // insert random bytes
        {
          const at = randomInt(b.length)
          return Buffer.concat([b.subarray(0, at), randomBytes(randomInt(1, 16)), b.subarray(at)])
        }
      case 3: // map head + random body
        return Buffer.concat([Buffer.from([0xa0 + randomInt(32)]), randomBytes(randomInt(0, 256))])
      case 4: // flip bits
        for (let k = randomInt(1, 4); k > 0; k--) {
          const at = randomInt(b.length)
          b[at] = b[at]! ^ (1 << randomInt(8))
        }
        return b
      default: {
        // duplicate a slice
        const from = randomInt(b.length)
        const to = randomInt(from, b.length + 1)
        return Buffer.concat([b, b.subarray(from, to)])
      }
    }
  }

  it('2000+ random and mutated inputs: only DecodeError, and validateBatch never throws on what decodes', () => {
    const inputs: Buffer[] = []
    for (let k = 0; k < 2000; k++) inputs.push(randomBytes(randomInt(0, 513)))
    for (let k = 0; k < 2000; k++) inputs.push(mutate(valid))
    for (let k = 0; k < 500; k++) inputs.push(mutate(validJson))
    let decoded = 0
    const failures: string[] = []
    for (const input of inputs) {
      let batch: ReturnType<typeof decodeBatch> | undefined
      try {
        batch = decodeBatch(input, LIMITS)
      } catch (err) {
        if (!(err instanceof DecodeError)) failures.push(`decode threw ${String(err)} on ${input.toString('hex')}`)
        continue
      }
      decoded++
      try {
        const r = validateBatch(batch, RULES, {})
        expect(r.seq).toBe(batch.seq)
      } catch (err) {
        failures.push(`validate threw ${String(err)} on ${input.toString('hex')}`)
      }
    }
    expect(failures).toEqual([])
    expect(decoded).toBeGreaterThan(0)
  })
})
