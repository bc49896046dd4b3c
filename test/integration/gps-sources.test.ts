// A runner with two GPS sources (a watch and a phone) gets the distance of one source at a time, not both added:
// the current source counts, the other only takes over once the current one has been silent for
// distanceSourceSwitchMs (30 s of sample time). Batches go to the broker's output engine as the ingest stage hands
// committed batches over.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DERIVED_METRICS } from '../../src/pipeline/derive.js'
import { startTestBroker, type TestBroker, waitFor } from '../helpers/harness.js'

describe('distance with two GPS sources', () => {
  let tb: TestBroker
  beforeAll(async () => {
    tb = await startTestBroker('postgres')
  }, 120_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('counts the current source only; the other takes over after the current one falls silent', async () => {
    const now = Date.now()
    const reg = tb.pg.registry
    await reg.createEvent({ eventId: 'two-gps', distanceM: 42_195, startsAt: new Date(now - 3600_000) })
    const keys = await reg.registerDevices([
      { deviceId: 'gps-watch', userId: 'duo', fingerprint: 'FP:watch' },
      { deviceId: 'gps-phone', userId: 'duo', fingerprint: 'FP:phone' },
    ])
    await reg.joinEvents('two-gps', [{ userId: 'duo', consentLeaderboard: true }])
    const t0 = now - 120_000
    // Powers of two: every subset sums differently, so the only way to reach 1 + 4 + 16 + 64 is the right choice.
    const batches: [string, number, number][] = [
      ['gps-watch', t0, 1],
      ['gps-phone', t0 + 1000, 2], // the watch is the source: not counted
      ['gps-watch', t0 + 2000, 4],
      ['gps-phone', t0 + 3000, 8], // still the watch's turn
      ['gps-phone', t0 + 2000 + 31_000, 16], // the watch silent for 31 s: the phone takes over
      ['gps-watch', t0 + 34_000, 32], // now the phone is the source
      ['gps-phone', t0 + 35_000, 64],
    ]
    for (const [deviceId, t, value] of batches) {
      tb.pg.outputs.onCommitted({
        deviceId,
        deviceKey: keys.get(deviceId) as number,
        userId: 'duo',
        scalars: [{ metric: DERIVED_METRICS.distance, t, value }],
        positions: [],
      })
    }
    await waitFor(() => tb.pg.outputs.distanceOf('duo') === 1 + 4 + 16 + 64, 30_000)
  })
})
