// Silent runners: during a race, a runner whose every device has gone quiet — no committed batch for silentMs, no
// clean DISCONNECT, course not finished — may be lying on the road with a dead watch. That raises a critical
// `runner_silent` alert with the last known position (to the runner's alerts and the event's medics); the next
// batch from any of their devices resolves it. Checked on the output tick, since silence produces no batch.
import type { Episodes } from './episodes.js'
import type { UserState } from './user-state.js'

export class SilentRunners {
  constructor(
    private readonly episodes: Pick<Episodes, 'settle'>,
    private readonly silentMs: number,
  ) {}

  /** a committed batch from this device (wall clock): the runner is heard, and an open silence alert resolves */
  async heard(u: UserState, deviceId: string, now: number): Promise<void> {
    u.heardFrom.set(deviceId, now)
    if (u.open.has('runner_silent')) await this.episodes.settle(u, this.finding(u, false, now))
  }

  /** a clean DISCONNECT: the device said goodbye, its silence is no alarm */
  signedOff(u: UserState, deviceId: string): void {
    u.heardFrom.delete(deviceId)
  }

  /** on the output tick, within the user's serialised work */
  async check(u: UserState, now: number): Promise<void> {
    const ev = u.event
    if (this.silentMs <= 0 || !ev || u.heardFrom.size === 0 || u.open.has('runner_silent')) return
    if (ev.startsAt !== null && now < ev.startsAt) return
    if (ev.courseM !== null && u.distanceM >= ev.courseM) return // finished
    let last = 0
    for (const t of u.heardFrom.values()) last = Math.max(last, t)
    if (now - last < this.silentMs) return
    await this.episodes.settle(u, this.finding(u, true, now, last))
  }

  private finding(u: UserState, active: boolean, now: number, lastHeard?: number) {
    const pos = u.window.pos[u.window.pos.length - 1]
    return {
      kind: 'runner_silent' as const,
      active,
      severity: 'critical' as const,
      t: now,
      evidence: {
        lat: pos?.lat ?? null,
        lon: pos?.lon ?? null,
        positionT: pos?.t ?? null,
        ...(lastHeard !== undefined ? { silentS: Math.round((now - lastHeard) / 1000) } : {}),
      },
    }
  }
}
