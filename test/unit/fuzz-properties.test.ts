// Property-based tests (fast-check) of the three places untrusted bytes meet the broker: decode, validation and the
// packet guard. Seeded and with a fixed number of runs, so CI is deterministic; fast-check's failure message carries
// the seed and the shrunk counterexample (re-run one with PULSEGATE_FUZZ_SEED=<seed>).
import { Duplex } from 'node:stream'
import { encode } from 'cbor-x'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { DecodeError, type DecodeReason, decodeBatch } from '../../src/pipeline/decode.js'
import { METRICS } from '../../src/pipeline/types.js'
import {
  BOUNDS,
  DEFAULT_RULES,
  POOR_ACCURACY_M,
  type RejectionReason,
  type ValidationRules,
  validateBatch,
} from '../../src/pipeline/validate.js'
import { PacketGuard } from '../../src/transport/packet-guard.js'
import { varint } from '../helpers/mqtt-bytes.js'

const SEED = Number(process.env.PULSEGATE_FUZZ_SEED ?? 20_261_202)
const RUNS = Number(process.env.PULSEGATE_FUZZ_RUNS ?? 400)
const params = { seed: SEED, numRuns: RUNS }
const LIMITS = { maxSamples: 50 }
const NOW = 1_764_061_200_000
const RULES: ValidationRules = { ...DEFAULT_RULES, now: NOW }

const DECODE_REASONS: ReadonlySet<string> = new Set<DecodeReason>([
  'unknown_format',
  'malformed_cbor',
  'malformed_json',
  'not_an_object',
  'bad_seq',
  'bad_samples',
  'empty_batch',
  'too_many_samples',
  'malformed',
])
const REJECTION_REASONS: ReadonlySet<string> = new Set<RejectionReason>([
  'not_an_object',
  'bad_timestamp',
  'future_timestamp',
  'too_old',
  'wrong_type',
  'out_of_range',
  'missing_field',
  'poor_accuracy',
  'implausible_speed',
  'unknown_field',
  'empty_sample',
  'too_many_fields',
])
const METRIC_NAME = new Map<number, string>(Object.entries(METRICS).map(([name, code]) => [code, name]))

// ---- generators ----

/** Numbers a firmware might send, and the ones it should not: bounds' edges, out of range, non-finite, non-integer. */
const wildNumber = fc.oneof(
  fc.double({ min: -1000, max: 10_000 }),
  fc.integer({ min: -10, max: 1100 }),
  fc.constantFrom(0, -0, 25, 250, 50, 100, 1000, -90, 90, -180, 180, 9000, -500, 200, 201, Number.NaN, Infinity),
  fc.double(),
)
const wildValue = fc.oneof(wildNumber, fc.string({ maxLength: 8 }), fc.boolean(), fc.constant(null), fc.anything())
const timestamp = fc.oneof(
  fc.integer({ min: NOW - 3_600_000, max: NOW + 60_000 }),
  fc.integer({ min: NOW - 8 * 24 * 3_600_000, max: NOW + 24 * 3_600_000 }),
  wildValue,
)
/** A sample object mixing known fields (good and bad values) and unknown keys. */
const sampleLike = fc
  .record(
    {
      t: timestamp,
      hr: wildValue,
      spo2: wildValue,
      steps: wildValue,
      cadence: wildValue,
      skin_temp: wildValue,
      resp: wildValue,
      lat: wildValue,
      lon: wildValue,
      alt: wildValue,
      acc: wildValue,
    },
    { requiredKeys: [] },
  )
  .chain((s) =>
    fc
      .dictionary(fc.string({ maxLength: 6 }), wildValue, { maxKeys: 3 })
      .map((extra) => ({ ...extra, ...s }) as Record<string, unknown>),
  )
const anySample = fc.oneof({ weight: 5, arbitrary: sampleLike }, { weight: 1, arbitrary: fc.anything() })

/** A double with -0 as 0: cbor-x encodes -0 as the integer 0, which is the same reading. */
const double = (min: number, max: number) => fc.double({ min, max, noNaN: true }).map((v) => v + 0)
/** Samples a valid firmware sends: every field inside BOUNDS. */
const validSample = fc.record(
  {
    t: fc.integer({ min: NOW - 3_600_000, max: NOW }),
    hr: fc.integer({ min: 25, max: 250 }),
    spo2: fc.integer({ min: 50, max: 100 }),
    steps: fc.integer({ min: 0, max: 1000 }),
    skin_temp: double(20, 45),
    lat: double(-90, 90),
    lon: double(-180, 180),
  },
  { requiredKeys: ['t'] },
)

/** Bytes biased towards what decode branches on: CBOR map heads, `{` after whitespace, and plain noise. */
const payloadBytes = fc.oneof(
  fc.uint8Array({ maxLength: 300 }),
  fc
    .tuple(fc.integer({ min: 0xa0, max: 0xbf }), fc.uint8Array({ maxLength: 200 }))
    .map(([h, rest]) => Uint8Array.from([h, ...rest])),
  fc.string({ maxLength: 200 }).map((s) => Buffer.from(`  {${s}`)),
  fc.jsonValue().map((v) => Buffer.from(JSON.stringify(v) ?? '')),
  fc
    .record({ seq: fc.anything(), samples: fc.anything() }, { requiredKeys: [] })
    .chain((o) => fc.constantFrom(Buffer.from(encode(o)), Buffer.from(JSON.stringify(o) ?? '{}'))),
)

function decodeOutcome(bytes: Uint8Array): 'batch' | 'decode_error' {
  try {
    const b = decodeBatch(Buffer.from(bytes), LIMITS)
    expect(Number.isSafeInteger(b.seq) && b.seq >= 0).toBe(true)
    expect(Array.isArray(b.samples) && b.samples.length >= 1 && b.samples.length <= LIMITS.maxSamples).toBe(true)
    expect(['cbor', 'json']).toContain(b.format)
    return 'batch'
  } catch (err) {
    // Anything but a DecodeError with a known reason fails the property (and the assertion above rethrows as is).
    if (!(err instanceof DecodeError)) throw err
    expect(DECODE_REASONS.has(err.reason), err.reason).toBe(true)
    return 'decode_error'
  }
}

describe('decode (fast-check)', () => {
  it('any bytes: a batch or a DecodeError, nothing else', () => {
    fc.assert(
      fc.property(payloadBytes, (bytes) => {
        decodeOutcome(bytes)
      }),
      params,
    )
  })

  it('valid batches round-trip through CBOR and JSON', () => {
    fc.assert(
      fc.property(
        fc.maxSafeNat(),
        fc.array(validSample, { minLength: 1, maxLength: LIMITS.maxSamples }),
        (seq, samples) => {
          const cbor = decodeBatch(Buffer.from(encode({ seq, samples })), LIMITS)
          expect(cbor).toEqual({ seq, samples, format: 'cbor' })
          const json = decodeBatch(Buffer.from(JSON.stringify({ seq, samples })), LIMITS)
          expect(json).toEqual({ seq, samples: JSON.parse(JSON.stringify(samples)), format: 'json' })
        },
      ),
      params,
    )
  })
})

describe('validate (fast-check)', () => {
  it('never throws; accepted readings are inside BOUNDS; every refusal names its reason and sample', () => {
    fc.assert(
      fc.property(fc.maxSafeNat(), fc.array(anySample, { minLength: 1, maxLength: 30 }), (seq, samples) => {
        const r = validateBatch({ seq, samples, format: 'json' }, RULES, {})
        const inWindow = (t: number) =>
          Number.isFinite(t) && t <= NOW + RULES.maxFutureSkewMs && t >= NOW - RULES.lateWindowMs
        for (const s of r.scalars) {
          const name = METRIC_NAME.get(s.metric)
          expect(name, `metric ${s.metric}`).toBeDefined()
          const b = BOUNDS[name as string] as { min: number; max: number; integer?: boolean }
          expect(s.value >= b.min && s.value <= b.max, `${name}=${s.value}`).toBe(true)
          if (b.integer) expect(Number.isInteger(s.value)).toBe(true)
          expect(inWindow(s.t), `t=${s.t}`).toBe(true)
        }
        const within = (v: number | null, k: string) => {
          if (v === null) return true
          const b = BOUNDS[k] as { min: number; max: number }
          return Number.isFinite(v) && v >= b.min && v <= b.max
        }
        for (const p of r.positions) {
          expect(within(p.lat, 'lat') && within(p.lon, 'lon') && within(p.alt, 'alt') && within(p.acc, 'acc')).toBe(
            true,
          )
          expect(p.acc === null || p.acc <= POOR_ACCURACY_M).toBe(true)
          expect(inWindow(p.t)).toBe(true)
        }
        for (const j of r.rejections) {
          expect(REJECTION_REASONS.has(j.reason), j.reason).toBe(true)
          expect(j.seq).toBe(seq)
          expect(j.index !== null && j.index >= 0 && j.index < samples.length).toBe(true)
        }
        // A sample that is not an object, or whose known field is out of its bounds, is refused by index.
        const refused = new Set(r.rejections.map((j) => j.index))
        samples.forEach((s, i) => {
          if (typeof s !== 'object' || s === null || Array.isArray(s)) {
            expect(refused.has(i), `sample ${i} is not an object`).toBe(true)
            return
          }
          for (const [k, b] of Object.entries(BOUNDS)) {
            const v = (s as Record<string, unknown>)[k]
            if (typeof v === 'number' && (v < b.min || v > b.max))
              expect(refused.has(i), `sample ${i}: ${k}=${v} out of bounds`).toBe(true)
          }
        })
      }),
      params,
    )
  })
})

// ---- packet guard ----

interface Spec {
  type: number
  /** declared Remaining Length; a body of this many bytes follows unless the header is a violation */
  length: number
  /** a Remaining Length varint with a 5th byte [MQTT-1.5.5] */
  malformed: boolean
}

/** Packets around the limit: its exact edge (header + body = max) and one past it are where an off-by-one hides. */
const packetSpec = (max: number) =>
  fc.record({
    type: fc.integer({ min: 0, max: 255 }),
    length: fc.oneof(
      fc.integer({ min: 0, max: Math.min(max, 200) }),
      fc.constantFrom(max - 4, max - 3, max - 2, max - 1).map((n) => Math.max(0, n)),
      fc.integer({ min: 0, max: 268_435_455 }),
    ),
    malformed: fc.boolean(),
  })

/** The byte stream, where the first violation starts and ends (its header), and what the guard must report. */
function buildStream(specs: Spec[], max: number) {
  const parts: Buffer[] = []
  let offset = 0
  for (const s of specs) {
    const header = s.malformed
      ? Buffer.from([s.type, 0x80 | (s.length & 0x7f), 0x80, 0x80, 0x80, 0x01])
      : Buffer.concat([Buffer.from([s.type]), varint(s.length)])
    if (s.malformed)
      return {
        bytes: Buffer.concat([...parts, header]),
        violation: { reason: 'malformed_length', declared: null, at: offset, headerEnd: offset + header.length },
      }
    if (header.length + s.length > max) {
      return {
        bytes: Buffer.concat([...parts, header]),
        violation: { reason: 'packet_too_large', declared: s.length, at: offset, headerEnd: offset + header.length },
      }
    }
    parts.push(header, Buffer.alloc(s.length, s.type))
    offset += header.length + s.length
  }
  return { bytes: Buffer.concat(parts), violation: null }
}

/** Feeds `bytes` to a PacketGuard in chunks cut at `cuts`; resolves with what it passed on and what it reported. */
function runGuard(bytes: Buffer, cuts: number[], max: number) {
  const socket = new Duplex({
    read() {},
    write(_c, _e, cb) {
      cb()
    },
  })
  const reported: { reason: string; declared: number | null }[] = []
  const guard = new PacketGuard(socket, {
    maxPacketBytes: max,
    onViolation: (reason, declared) => reported.push({ reason, declared }),
  })
  const out: Buffer[] = []
  guard.on('data', (c: Buffer) => out.push(c))
  guard.on('error', () => {})
  const done = new Promise<void>((resolve) => {
    guard.once('end', resolve)
    guard.once('close', resolve)
  })
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b)
  let from = 0
  for (const p of [...points, bytes.length]) {
    if (p > from) socket.push(bytes.subarray(from, p))
    from = Math.max(from, p)
  }
  socket.push(null)
  return done.then(() => ({ out: Buffer.concat(out), reported }))
}

describe('packet guard (fast-check)', () => {
  it('split anywhere: bytes pass unchanged while lengths are valid; a violation iff a header is too large or malformed', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 2, max: 400 }).chain((max) =>
          fc.tuple(
            fc.constant(max),
            // A malformed header now and then, not in most streams: the packets after one are never looked at.
            fc
              .array(packetSpec(max), { maxLength: 12 })
              .map((specs) => specs.map((s, i) => ({ ...s, malformed: s.malformed && i % 4 === 3 }))),
          ),
        ),
        fc.array(fc.nat(), { maxLength: 20 }),
        async ([max, specs], cuts) => {
          const { bytes, violation } = buildStream(specs, max)
          const { out, reported } = await runGuard(bytes, cuts, max)
          if (violation === null) {
            expect(reported).toEqual([])
            expect(out.equals(bytes)).toBe(true)
          } else {
            expect(reported).toEqual([{ reason: violation.reason, declared: violation.declared }])
            // What passed is a prefix of the stream that stops before the offending header is complete.
            expect(out.equals(bytes.subarray(0, out.length))).toBe(true)
            expect(out.length).toBeLessThan(violation.headerEnd)
          }
        },
      ),
      params,
    )
  })
})
