// Stage 1: bytes → envelope-checked batch. Samples stay untrusted (`unknown[]`); validate.ts judges them.
// Contract: for any input bytes this either returns a DecodedBatch or throws a DecodeError, never anything else.

import { Decoder, type Options } from 'cbor-x'
import type { DecodedBatch } from './types.js'

export type DecodeReason =
  | 'unknown_format'
  | 'malformed_cbor'
  | 'malformed_json'
  | 'not_an_object'
  | 'bad_seq'
  | 'bad_samples'
  | 'empty_batch'
  | 'too_many_samples'
  /** catch-all for a failure outside the cases above; not expected to occur */
  | 'malformed'

export class DecodeError extends Error {
  override readonly name = 'DecodeError'
  constructor(
    /** machine-readable, one of DecodeReason (typed as string so other stages may add their own) */
    public readonly reason: string,
    message: string,
  ) {
    super(message)
  }
}

export interface DecodeLimits {
  /** most samples one batch may carry, e.g. 2000 */
  maxSamples: number
}

// `int64AsNumber`: the CBOR 8-byte integer form (0x1b) is what most firmware encoders (tinycbor, QCBOR, cbor2) emit for
// epoch-ms timestamps (> 2^32). Without it cbor-x yields a bigint and every such timestamp would fail as a wrong type.
// Values above 2^53 become imprecise numbers ≥ 2^53, which the safe-integer checks still refuse.
// Missing from cbor-x's Options typings, hence the widened type (and the non-literal, which skips excess-property checks).
const decoderOptions: Options & { int64AsNumber: boolean } = {
  mapsAsObjects: true,
  useRecords: false,
  int64AsNumber: true,
}
const cbor = new Decoder(decoderOptions)

/** Sample-count threshold under which a pairwise identity check beats building a Set. */
const PAIRWISE_MAX = 16

function describe(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err)
  return msg.length > 200 ? msg.slice(0, 200) : msg
}

/**
 * Decode one readings batch. CBOR (RFC 8949) or JSON, told apart by the first byte: `{` (0x7B), optionally after JSON
 * whitespace → JSON; a CBOR map head (0xA0–0xBF, including 0xBF indefinite) → CBOR; anything else → `unknown_format`.
 * Checks the envelope (`seq`, `samples`); unknown envelope keys are ignored. Throws only DecodeError.
 */
export function decodeBatch(payload: Buffer, limits: DecodeLimits): DecodedBatch {
  try {
    return decodeUnchecked(payload, limits)
  } catch (err) {
    if (err instanceof DecodeError) throw err
    // Not expected to be reachable; the contract says DecodeError only, whatever happens underneath.
    throw new DecodeError('malformed', `unexpected decode failure: ${describe(err)}`)
  }
}

function decodeUnchecked(payload: Buffer, limits: DecodeLimits): DecodedBatch {
  if (!(payload instanceof Uint8Array) || payload.length === 0) {
    throw new DecodeError('unknown_format', 'empty payload')
  }
  const first = payload[0]!
  let root: unknown
  let format: DecodedBatch['format']
  if (first >= 0xa0 && first <= 0xbf) {
    format = 'cbor'
    try {
      // cbor-x throws on truncation, trailing bytes, over-long length heads (before allocating) and deep nesting.
      root = cbor.decode(payload)
    } catch (err) {
      throw new DecodeError('malformed_cbor', `malformed CBOR: ${describe(err)}`)
    }
  } else {
    let i = 0
    const n = payload.length
    let b = first
    // JSON whitespace (RFC 8259): space, tab, LF, CR
    while (b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d) {
      if (++i >= n) break
      b = payload[i]!
    }
    if (i >= n || b !== 0x7b) {
      throw new DecodeError(
        'unknown_format',
        `first byte 0x${first.toString(16).padStart(2, '0')} is neither JSON nor a CBOR map`,
      )
    }
    format = 'json'
    try {
      root = JSON.parse(payload.toString('utf8'))
    } catch (err) {
      throw new DecodeError('malformed_json', `malformed JSON: ${describe(err)}`)
    }
  }

  if (root === null || typeof root !== 'object' || Array.isArray(root)) {
    // Defensive: a `{` start or a CBOR map head always yields an object today.
    throw new DecodeError('not_an_object', 'batch is not a map/object')
  }
  const env = root as Record<string, unknown>

  const seq = env['seq']
  if (typeof seq !== 'number' || !Number.isSafeInteger(seq) || seq < 0) {
    throw new DecodeError('bad_seq', '`seq` must be a non-negative integer ≤ 2^53-1')
  }
  const samples = env['samples']
  if (!Array.isArray(samples)) {
    throw new DecodeError('bad_samples', '`samples` must be an array')
  }
  // Length only: nothing below touches an element before this passes.
  const count = samples.length
  if (count === 0) throw new DecodeError('empty_batch', '`samples` is empty')
  if (count > limits.maxSamples) {
    throw new DecodeError('too_many_samples', `${count} samples, at most ${limits.maxSamples} per batch`)
  }

  // CBOR value sharing (tags 28/29) and packed references (tags 51/6), which cbor-x always decodes, let a few bytes repeat
  // one (possibly huge) sample object thousands of times; validation would then walk it once per reference. A legitimate
  // batch never repeats a sample by reference, so refuse it here and keep validation work proportional to payload size.
  if (format === 'cbor' && count > 1 && hasRepeatedObject(samples)) {
    throw new DecodeError(
      'malformed_cbor',
      'a sample object is referenced more than once (CBOR value sharing is not supported)',
    )
  }

  return { seq: seq === 0 ? 0 : seq, samples, format }
}

function hasRepeatedObject(samples: unknown[]): boolean {
  const n = samples.length
  if (n <= PAIRWISE_MAX) {
    for (let i = 1; i < n; i++) {
      const s = samples[i]
      if (typeof s !== 'object' || s === null) continue
      for (let j = 0; j < i; j++) if (samples[j] === s) return true
    }
    return false
  }
  const seen = new Set<unknown>()
  for (let i = 0; i < n; i++) {
    const s = samples[i]
    if (typeof s !== 'object' || s === null) continue
    if (seen.has(s)) return true
    seen.add(s)
  }
  return false
}
