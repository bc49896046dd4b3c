// Helpers for signed readings in tests: alter a COSE message as a bridge would, keeping its structure intact.
import { Sign1 } from '@auth0/cose'
import { decode, encode } from 'cbor-x'

/**
 * The COSE_Sign1 with its payload replaced by `edit` of it and its headers and signature kept. (The identity edit
 * gives back a message that still verifies: the tests check that, so the helper changes nothing else.)
 */
export function alterSign1(bytes: Uint8Array, edit: (payload: Uint8Array) => Uint8Array): Buffer {
  const msg = Sign1.decode(bytes)
  return new Sign1(msg.protectedHeaders, msg.unprotectedHeaders, edit(msg.payload), msg.signature).encode()
}

/** Adds `delta` to every `hr` of the CBOR batch inside a Sign1: an altered reading. */
export function bumpHeartRates(sign1: Uint8Array, delta: number): Buffer {
  return alterSign1(sign1, (p) => {
    const batch = decode(p) as { seq: number; samples: Record<string, number>[] }
    for (const s of batch.samples) if (typeof s.hr === 'number') s.hr += delta
    return encode(batch)
  })
}
