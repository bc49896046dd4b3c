// Glue of stage 0 (envelope.ts) into the ingest pipeline: which batches take the asynchronous path, the metric, and
// the signed_batches mark of a signed batch. Kept apart so ingest.ts reads as the stage sequence.
import type { Logger } from '../log.js'
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
 * Opens batches' envelopes for the devices of their topics, in arrival order per device: a plain batch of a device
 * whose keys are cached, that needs no signature and has nothing of its own still being opened, is answered
 * synchronously (one Map look-up); everything else waits for the keys and the COSE work, which may finish out of
 * order (verification runs off the event loop), so the outcomes are handed on in the order the batches came (the
 * position track and the distance derivation need them in order). Calls exactly one outcome function per batch.
 */
export class EnvelopeStage {
  /** per device: the outcome of its last batch still being opened */
  private readonly tails = new Map<string, Promise<void>>()

  constructor(
    private readonly keys: DeviceKeySource,
    private readonly metrics: Pick<Metrics, 'envelopes'>,
    private readonly log: Pick<Logger, 'error'>,
  ) {}

  open(deviceId: string, payload: Buffer, out: StageOutcome): void {
    let material: DeviceKeyMaterial | Promise<DeviceKeyMaterial>
    try {
      material = this.keys.get(deviceId)
    } catch (err) {
      out.unavailable(err as Error)
      return
    }
    const kind = envelopeKind(payload) ?? 'plain'
    const prev = this.tails.get(deviceId)
    if (!prev && !(material instanceof Promise) && kind === 'plain' && !material.signedRequired) {
      this.metrics.envelopes.inc({ kind, result: 'accepted' })
      out.opened(PLAIN(payload))
      return
    }
    // Started at once (batches of one device are verified in parallel), handed on in order.
    const settled = Promise.resolve(material).then(
      (m) =>
        openEnvelope(payload, deviceId, m).then(
          (opened) => () => {
            this.metrics.envelopes.inc({ kind, result: 'accepted' })
            out.opened(opened)
          },
          (err: unknown) => () => {
            const reason = err instanceof EnvelopeError ? err.reason : 'malformed_cose'
            this.metrics.envelopes.inc({ kind, result: reason })
            out.refused(reason, (err as Error).message)
          },
        ),
      (err: unknown) => () => out.unavailable(err instanceof Error ? err : new Error(String(err))),
    )
    // Never rejects: a failing outcome function must not hold up the device's later batches.
    const tail: Promise<void> = Promise.all([prev, settled]).then(([, deliver]) => {
      if (this.tails.get(deviceId) === tail) this.tails.delete(deviceId)
      try {
        deliver()
      } catch (err) {
        this.log.error({ err: (err as Error).message }, 'readings batch handling failed after its envelope')
      }
    })
    this.tails.set(deviceId, tail)
  }
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
