// Shapes passed between pipeline stages. Each stage is a pure function of these, testable alone.
import { z } from 'zod'

/** Scalar metrics stored in the `samples` hypertable; the number is the stored smallint code (never reuse one). */
export const METRICS = {
  hr: 1, // heart rate, beats/min (OMH heart-rate)
  spo2: 2, // oxygen saturation, % (OMH oxygen-saturation)
  steps: 3, // steps since the previous sample, count (OMH step-count)
  cadence: 4, // steps/min
  skin_temp: 5, // wrist skin temperature, °C (OMH body-temperature, measurement_location=wrist)
  resp: 6, // respiratory rate, breaths/min
} as const

export type MetricName = keyof typeof METRICS
export type MetricCode = (typeof METRICS)[MetricName]

export interface ScalarSample {
  /** a METRICS code, or a derived one (pipeline/derive.ts) */
  metric: number
  /** epoch milliseconds */
  t: number
  value: number
}

export interface PositionSample {
  /** epoch milliseconds */
  t: number
  lat: number
  lon: number
  alt: number | null
  /** horizontal accuracy, metres */
  acc: number | null
}

/** One message on `devices/{id}/rejections` (JSON, QoS 1); the type is inferred (docs/asyncapi.yaml). */
export const rejectionSchema = z
  .object({
    seq: z.number().int().nullable().describe('the batch refused (null: a status message)'),
    /** machine-readable reason, e.g. `out_of_range`, `future_timestamp`, `malformed` */
    reason: z
      .string()
      .describe('machine-readable, e.g. out_of_range, future_timestamp, malformed_cbor, more_rejections'),
    field: z.string().nullable(),
    index: z.number().int().nullable().describe("the sample's index in the batch"),
    count: z.number().int().optional().describe('more_rejections: how many further rejections were not sent'),
  })
  .describe('why (part of) a batch was refused')
export type Rejection = z.infer<typeof rejectionSchema>

/** What decode produces: the envelope checked, the samples still untrusted. */
export interface DecodedBatch {
  seq: number
  samples: unknown[]
  format: 'cbor' | 'json'
}

export interface ValidatedBatch {
  seq: number
  scalars: ScalarSample[]
  positions: PositionSample[]
  rejections: Rejection[]
}
