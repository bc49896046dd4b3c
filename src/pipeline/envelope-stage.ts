// Glue of stage 0 (envelope.ts) into the ingest pipeline: which batches take the asynchronous path, the metric, and
// the signed_batches mark of a signed batch. Kept apart so ingest.ts reads as the stage sequence.
import type { Metrics } from '../metrics.js'
import type { BatchMark } from './commit.js'
import {
  type DeviceKeyMaterial,
  type DeviceKeySource,
  EnvelopeError,
  envelopeKind,
  type OpenedBatch,
  openEnvelope,
} from './envelope.js'
import type { PositionSample, ScalarSample } from './types.js'

export const PLAIN = (payload: Buffer): OpenedBatch => ({ payload, signed: false, encrypted: false })

export interface StageOutcome {
  opened(batch: OpenedBatch): void
  /** refused for good: the reason is a rejection reason (EnvelopeReason) */
  refused(reason: string, detail: string): void
  /** the device's keys could not be loaded: nothing was judged */
  unavailable(err: Error): void
}

/**
 * Opens the batch's envelope for the device of its topic. A plain batch of a device whose keys are cached and that
 * needs no signature is answered synchronously (one Map look-up); everything else waits for the keys and the COSE
 * work. Calls exactly one of the outcome's functions, once.
 */
export function openStage(
  keys: DeviceKeySource,
  deviceId: string,
  payload: Buffer,
  metrics: Pick<Metrics, 'envelopes'>,
  out: StageOutcome,
): void {
  let material: DeviceKeyMaterial | Promise<DeviceKeyMaterial>
  try {
    material = keys.get(deviceId)
  } catch (err) {
    out.unavailable(err as Error)
    return
  }
  const kind = envelopeKind(payload) ?? 'plain'
  if (!(material instanceof Promise) && kind === 'plain' && !material.signedRequired) {
    metrics.envelopes.inc({ kind, result: 'accepted' })
    out.opened(PLAIN(payload))
    return
  }
  Promise.resolve(material).then(
    (m) =>
      openEnvelope(payload, deviceId, m).then(
        (opened) => {
          metrics.envelopes.inc({ kind, result: 'accepted' })
          out.opened(opened)
        },
        (err: unknown) => {
          const reason = err instanceof EnvelopeError ? err.reason : 'malformed_cose'
          metrics.envelopes.inc({ kind, result: reason })
          out.refused(reason, (err as Error).message)
        },
      ),
    (err: unknown) => out.unavailable(err instanceof Error ? err : new Error(String(err))),
  )
}

/** The signed_batches row of a signed batch: its span over the samples stored (derived ones included). */
export function markOf(
  seq: number,
  scalars: readonly ScalarSample[],
  positions: readonly PositionSample[],
  encrypted: boolean,
): BatchMark {
  let firstT = Number.POSITIVE_INFINITY
  let lastT = Number.NEGATIVE_INFINITY
  for (const s of scalars) {
    if (s.t < firstT) firstT = s.t
    if (s.t > lastT) lastT = s.t
  }
  for (const p of positions) {
    if (p.t < firstT) firstT = p.t
    if (p.t > lastT) lastT = p.t
  }
  return { seq, firstT, lastT, samples: scalars.length + positions.length, encrypted }
}
