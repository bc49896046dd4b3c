// Race safety gaps. A runner with two GPS sources (a watch and a phone) gets the distance of one source at a time,
// not both added: the current source counts, the other only takes over once the current one has been silent for
// 30 s of sample time. A runner whose every device falls silent mid-race raises runner_silent to the event's medics
// with the last known position. Batches go to the broker's output engine as the ingest stage hands committed ones over.
import type { AlertMessage } from '../../src/outputs/payloads.js'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { DERIVED_METRICS } from '../../src/pipeline/derive.js'
import { connectWithToken, startTestBroker, type TestBroker, token, waitFor } from '../helpers/harness.js'

describe('race safety', () => {
  let tb: TestBroker
  beforeAll(async () => {
    tb = await startTestBroker('postgres', { outputs: { silentRunnerMs: 1500 } })
  }, 120_000)
  afterAll(async () => {
    await tb?.stop()
  }, 90_000)

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
  }, 90_000)

  it('a runner whose devices all fall silent mid-race: runner_silent to the medics, with the last position', async () => {
    const now = Date.now()
    const reg = tb.pg.registry
    await reg.createEvent({ eventId: 'quiet-race', distanceM: 42_195, startsAt: new Date(now - 3600_000) })
    const keys = await reg.registerDevices([
      { deviceId: 'quiet-watch', userId: 'quiet', fingerprint: 'FP:qwatch' },
      { deviceId: 'quiet-phone', userId: 'quiet', fingerprint: 'FP:qphone' },
    ])
    await reg.joinEvents('quiet-race', [{ userId: 'quiet', consentLeaderboard: true }])
    const medic = await connectWithToken(tb, await token(tb, 'doc', 'medic', ['quiet-race']), 'medic:doc:1')
    const alerts: AlertMessage[] = []
    medic.on('message', (_t, payload) => alerts.push(JSON.parse(payload.toString()) as AlertMessage))
    await medic.subscribeAsync('events/quiet-race/alerts', { qos: 1 })
    const batch = (deviceId: string, t: number, lat: number, lon: number) =>
      tb.pg.outputs.onCommitted({
        deviceId,
        deviceKey: keys.get(deviceId) as number,
        userId: 'quiet',
        scalars: [],
        positions: [{ t, lat, lon, alt: null, acc: 5 }],
      })
    batch('quiet-watch', now - 2000, 52.5, 13.4)
    batch('quiet-phone', now - 1000, 52.51, 13.41)
    const mine = (state: string) =>
      alerts.find((a) => a.kind === 'runner_silent' && a.userId === 'quiet' && a.state === state)
    const opened = await waitFor(() => mine('opened'), 30_000)
    expect(opened.severity).toBe('critical')
    expect(opened.eventId).toBe('quiet-race')
    expect(opened.evidence).toMatchObject({ lat: 52.51, lon: 13.41, positionT: now - 1000 })
    // Heard again: the episode resolves, with the same id.
    batch('quiet-watch', Date.now(), 52.52, 13.42)
    const resolved = await waitFor(() => mine('resolved'), 30_000)
    expect(resolved.id).toBe(opened.id)
    await medic.endAsync()
  }, 90_000)
})
