// Live snapshots on their own: one per marked user per tick, published in slices with a yield to the event loop
// between them (so PUBACKs are not held behind a tick of 50,000 runners), ranks from the real in-process board.
import { describe, expect, it } from 'vitest'
import { createMetrics } from '../../src/metrics.js'
import { MemoryLeaderboard } from '../../src/outputs/leaderboard.js'
import { LIVE_SLICE, LiveSnapshots, zoneOf } from '../../src/outputs/live.js'
import type { LiveSnapshot } from '../../src/outputs/payloads.js'
import { blankState, type UserState } from '../../src/outputs/user-state.js'

const T = 1_764_061_200_000
/** metres per degree of latitude on the mean Earth sphere */
const M_PER_DEG = (6371008.8 * Math.PI) / 180

function recorder() {
  const out: { topic: string; snap: LiveSnapshot; qos: number; retain: boolean }[] = []
  return {
    out,
    publish(topic: string, payload: string | Buffer, qos: 0 | 1, retain: boolean) {
      out.push({ topic, snap: JSON.parse(payload.toString()) as LiveSnapshot, qos, retain })
    },
  }
}

function runner(i: number, eventId: string | null): UserState {
  const u = blankState(`u${i}`, `trk-${i}`)
  u.event = eventId ? { eventId, consent: i % 2 === 0, startsAt: null, courseM: 42_195 } : null
  u.distanceM = 1000 + i + 0.4
  u.window.hr.push({ t: T - 1000, hr: 140 }, { t: T, hr: 150 })
  return u
}

describe('HR zones', () => {
  it('1–5 by tenths of the predicted max from 50 %, null below or without HR', () => {
    expect(zoneOf(null, 180)).toBeNull()
    expect(zoneOf(89, 180)).toBeNull()
    expect(zoneOf(90, 180)).toBe(1)
    expect(zoneOf(130, 180)).toBe(3)
    expect(zoneOf(162, 180)).toBe(5)
    expect(zoneOf(210, 180)).toBe(5)
  })
})

describe('live snapshots', () => {
  it('publishes one retained snapshot per marked user, yielding to the event loop after every slice', async () => {
    const board = new MemoryLeaderboard()
    const users = new Map<string, UserState>()
    const n = 2 * LIVE_SLICE + 20
    for (let i = 0; i < n; i++) {
      const u = runner(i, 'ev1')
      users.set(u.userId, u)
      await board.update('ev1', u.userId, u.distanceM, u.event?.consent ?? false)
    }
    const pub = recorder()
    const live = new LiveSnapshots(board, pub, createMetrics(), users)
    for (let i = 0; i < n; i++) live.mark(`u${i}`)
    for (let i = 0; i < 10; i++) live.mark(`u${i}`) // several batches before one tick: still one snapshot

    // Queued before the tick: it runs at the tick's first yield, which must come after exactly one slice.
    const atYields: number[] = []
    let done = false
    const probe = () => {
      if (done) return
      atYields.push(pub.out.length)
      setImmediate(probe)
    }
    setImmediate(probe)
    await live.publish()
    done = true
    expect(atYields).toEqual([LIVE_SLICE, 2 * LIVE_SLICE]) // the last slice runs to the end without a yield
    expect(pub.out.map((m) => m.topic)).toEqual([...Array(n).keys()].map((i) => `users/u${i}/live`))
    expect(pub.out.every((m) => m.qos === 0 && m.retain)).toBe(true)
    // The best runner (most distance, consenting or not) is rank 1 privately.
    expect(pub.out[n - 1]?.snap).toEqual({
      t: T,
      hr: 150,
      zone: 4, // 150 of 180 (age unknown: 40)
      paceSPerKm: null,
      distanceM: 1000 + n - 1,
      eventId: 'ev1',
      rank: 1,
    })
    expect(pub.out[0]?.snap.rank).toBe(n)

    await live.publish() // nothing new since
    expect(pub.out).toHaveLength(n)
  })

  it('outside an event: no rank; pace from the last minute of GPS; a forgotten user is skipped', async () => {
    const users = new Map<string, UserState>()
    const u = runner(1, null)
    u.profile.age = 30 // max 187: 150 bpm is 80.2 %
    // 200 m north in the last 60 s: 3.33 m/s, 300 s/km; the snapshot's time is the newest of HR and GPS
    u.window.pos.push({ t: T - 59_500, lat: 52, lon: 13 }, { t: T + 500, lat: 52 + 200 / M_PER_DEG, lon: 13 })
    users.set(u.userId, u)
    const pub = recorder()
    const metrics = createMetrics()
    const live = new LiveSnapshots(new MemoryLeaderboard(), pub, metrics, users)
    live.mark('u1')
    live.mark('gone') // evicted between its batch and the tick
    await live.publish()
    expect(pub.out).toEqual([
      {
        topic: 'users/u1/live',
        qos: 0,
        retain: true,
        snap: { t: T + 500, hr: 150, zone: 4, paceSPerKm: 300, distanceM: 1001, eventId: null, rank: null },
      },
    ])
    expect((await metrics.liveSnapshots.get()).values[0]?.value).toBe(1)
  })
})
