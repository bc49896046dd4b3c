// What devices and bridges publish, as zod schemas for the contract (docs/asyncapi.yaml, src/topics/asyncapi.ts).
// The readings batch is judged by decode.ts and validate.ts (hand-written for speed, with per-sample reasons); its
// schema here is built from the same tables (BOUNDS, the metric names), so the document follows the validator.
import { z } from 'zod'
import { BOUNDS, POOR_ACCURACY_M } from './validate.js'

function bounded(name: string): z.ZodNumber {
  const b = BOUNDS[name] as { min: number; max: number; integer?: boolean }
  const n = b.integer ? z.number().int() : z.number()
  return n.min(b.min).max(b.max)
}

const UNITS: Record<string, string> = {
  hr: 'heart rate, beats/min',
  spo2: 'oxygen saturation, %',
  steps: 'steps since the previous sample',
  cadence: 'steps/min',
  skin_temp: 'wrist skin temperature, °C',
  resp: 'respiratory rate, breaths/min',
  lat: 'WGS 84 degrees (with lon)',
  lon: 'WGS 84 degrees (with lat)',
  alt: 'metres',
  acc: `horizontal accuracy, metres; worse than ${POOR_ACCURACY_M} m is refused (poor_accuracy)`,
}

const sampleShape: Record<string, z.ZodType> = {
  t: z
    .number()
    .int()
    .min(0)
    .describe('epoch milliseconds; not in the future beyond the clock skew, not older than the late window'),
}
for (const name of Object.keys(BOUNDS))
  sampleShape[name] = bounded(name)
    .describe(UNITS[name] ?? name)
    .optional()

/** One sample: a timestamp and one or more metric values; a position is lat and lon together (alt, acc optional). */
export const sampleSchema = z
  .object(sampleShape)
  .describe('a timestamp with one or more values; a value outside its bounds is refused alone with a reason')

/** `devices/{id}/readings`: CBOR (RFC 8949) or JSON, told apart by the first byte. */
export const readingsBatchSchema = z
  .object({
    seq: z.number().int().min(0).describe('per-device batch counter, increases by 1 per batch'),
    samples: z.array(sampleSchema).min(1).describe('at most ingest.maxSamplesPerBatch (broker.config.ts)'),
  })
  .describe('a batch of samples; a sample is identified by (device, metric, t) and stored once')
export type ReadingsBatch = z.infer<typeof readingsBatchSchema>

/** `devices/{id}/status` (JSON): the latest per device is kept; other keys are kept as sent. */
export const deviceStatusSchema = z
  .looseObject({
    battery: z.number().min(0).max(100).optional().describe('percent'),
    firmware: z.string().max(100).optional(),
    buffered: z.number().int().min(0).optional().describe('samples buffered on the device, not yet uploaded'),
  })
  .describe('battery, firmware, buffered-sample count')
export type DeviceStatus = z.infer<typeof deviceStatusSchema>

/**
 * `devices/{id}/config` (retained, JSON): published by an operator (role admin), routed and retained as sent; the
 * device reads it at connect. What the reference firmware (simulators/device.ts) understands; it ignores the rest.
 */
export const deviceConfigSchema = z
  .looseObject({
    intervalMs: z.number().min(200).max(60_000).optional().describe('sample every intervalMs'),
    batchEvery: z.number().int().min(1).max(600).optional().describe('send a batch every batchEvery samples'),
  })
  .describe('sampling instructions (adaptive sampling, edge throttling under load)')
export type DeviceConfig = z.infer<typeof deviceConfigSchema>
