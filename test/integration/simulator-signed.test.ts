// The signed-readings simulator (simulators/signed.ts) in a small run against a real broker and store: bridges relay
// signed (then signed and encrypted) batches, some of them malicious; every forged batch must be refused, none found
// in the database, and every genuine acked sample stored.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { runSigned, type SignedReport } from '../../simulators/signed.js'
import { startTestBroker, type TestBroker } from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'

function expectClean(r: SignedReport): void {
  expect(r.problems).toEqual([])
  expect(r.ok).toBe(true)
  expect(r.maliciousBridges).toBeGreaterThan(0)
  expect(r.altered.sent).toBeGreaterThan(0)
  expect(r.replayed.sent).toBeGreaterThan(0)
  expect(r.altered).toEqual({ sent: r.altered.sent, refused: r.altered.sent, stored: 0 })
  expect(r.replayed).toEqual({ sent: r.replayed.sent, refused: r.replayed.sent, stored: 0 })
  expect(r.genuine.acked).toBeGreaterThan(0)
  expect(r.genuine.stored).toBe(r.genuine.acked)
}

describe('simulator: signed readings with malicious bridges', () => {
  let tb: TestBroker
  beforeAll(async () => {
    tb = await startTestBroker('postgres', { ingest: { deadLetterIntervalMs: 0 } })
  }, 120_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('signed: altered and replayed batches refused, none stored', async () => {
    const r = await runSigned({
      devices: 12,
      durationS: 2,
      batches: 4,
      encrypted: false,
      maliciousShare: 0.34,
      seed: 3,
      idPrefix: 'sigsim-a',
      broker: tb.pg,
      log: () => undefined,
    })
    expectClean(r)
    const m = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_ingest_envelopes_total')
    expect(metricValue(m, 'pulsegate_ingest_envelopes_total', { result: 'bad_signature' })).toBe(r.altered.sent)
    expect(metricValue(m, 'pulsegate_ingest_envelopes_total', { result: 'device_mismatch' })).toBe(r.replayed.sent)
  }, 120_000)

  it('signed and encrypted: the same, through COSE_Encrypt0', async () => {
    const r = await runSigned({
      devices: 8,
      durationS: 2,
      batches: 4,
      encrypted: true,
      maliciousShare: 0.5,
      seed: 4,
      idPrefix: 'sigsim-b',
      broker: tb.pg,
      log: () => undefined,
    })
    expectClean(r)
    expect(r.encrypted).toBe(true)
    const m = await tb.pg.metrics.registry.getSingleMetricAsString('pulsegate_ingest_envelopes_total')
    expect(metricValue(m, 'pulsegate_ingest_envelopes_total', { kind: 'encrypt0', result: 'decrypt_failed' })).toBe(
      r.altered.sent,
    )
  }, 120_000)
})
