// The silent-runner check on its own: who is silent, and who is not (finished, not started, said goodbye).
import { describe, expect, it } from 'vitest'
import type { Finding } from '../../src/outputs/rules.js'
import { SilentRunners } from '../../src/outputs/silence.js'
import { blankState, type UserState } from '../../src/outputs/user-state.js'

function racing(startsAt: number | null = 0, courseM: number | null = 42_195): UserState {
  const u = blankState('r1', 'w1')
  u.event = { eventId: 'e', consent: true, startsAt, courseM }
  return u
}

describe('SilentRunners', () => {
  const setup = () => {
    const settled: Finding[] = []
    const s = new SilentRunners(
      {
        settle: async (u, f) => {
          settled.push(f)
          if (f.active)
            u.open.set(f.kind, {
              id: 'x',
              kind: f.kind,
              severity: f.severity,
              openedAt: f.t,
              deviceId: 'w1',
              eventId: 'e',
            })
          else u.open.delete(f.kind)
        },
      },
      1000,
    )
    return { s, settled }
  }

  it('alerts once when every device is silent, with the last position; resolves when heard again', async () => {
    const { s, settled } = setup()
    const u = racing()
    u.window.pos.push({ t: 5, lat: 1, lon: 2 })
    await s.heard(u, 'w1', 10_000)
    await s.heard(u, 'p1', 10_500)
    await s.check(u, 11_400) // the phone spoke 900 ms ago
    expect(settled).toEqual([])
    await s.check(u, 11_500)
    await s.check(u, 12_000)
    expect(settled).toHaveLength(1)
    expect(settled[0]).toMatchObject({ kind: 'runner_silent', active: true, evidence: { lat: 1, lon: 2, silentS: 1 } })
    await s.heard(u, 'w1', 13_000)
    expect(settled[1]).toMatchObject({ kind: 'runner_silent', active: false })
  })

  it('no alert for a device that said goodbye, a finished runner, or a race not yet started', async () => {
    const { s, settled } = setup()
    const gone = racing()
    await s.heard(gone, 'w1', 0)
    s.signedOff(gone, 'w1')
    await s.check(gone, 60_000)
    const finished = racing(0, 1000)
    finished.distanceM = 1000
    await s.heard(finished, 'w1', 0)
    await s.check(finished, 60_000)
    const early = racing(100_000)
    await s.heard(early, 'w1', 0)
    await s.check(early, 60_000)
    const notRacing = blankState('r2', 'w2')
    await s.heard(notRacing, 'w2', 0)
    await s.check(notRacing, 60_000)
    expect(settled).toEqual([])
  })
})
