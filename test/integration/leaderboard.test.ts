// One suite, both leaderboard implementations: the in-process one and Redis sorted sets (real Redis).
import crypto from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import { type LeaderboardStore, MemoryLeaderboard, RedisLeaderboard } from '../../src/outputs/leaderboard.js'
import { REDIS_URL } from '../helpers/harness.js'

const impls: [string, () => LeaderboardStore][] = [
  ['memory', () => new MemoryLeaderboard()],
  ['redis', () => new RedisLeaderboard(REDIS_URL, `pulsegate-test-${crypto.randomBytes(4).toString('hex')}`)],
]

describe.each(impls)('%s leaderboard', (_name, make) => {
  const lb = make()
  afterAll(() => lb.close())
  const ev = `e${crypto.randomBytes(3).toString('hex')}`

  it('orders by distance, ranks everyone, shows only consenting runners on the public board', async () => {
    await lb.update(ev, 'amy', 5000, true)
    await lb.update(ev, 'ben', 7000, false)
    await lb.update(ev, 'cat', 6000, true)
    await lb.update(ev, 'dan', 1000, true)
    const { runners, top } = await lb.top(ev, 2)
    expect(runners).toBe(4)
    expect(top).toEqual([
      { userId: 'cat', distanceM: 6000 },
      { userId: 'amy', distanceM: 5000 },
    ])
    const ranks = await lb.ranks(ev, ['ben', 'cat', 'dan', 'nobody'])
    expect(Object.fromEntries(ranks)).toEqual({ ben: 1, cat: 2, dan: 4 })
  })

  it('late or out-of-order points never move a runner backwards', async () => {
    await lb.update(ev, 'cat', 6500, true)
    await lb.update(ev, 'cat', 3000, true)
    expect((await lb.top(ev, 1)).top[0]).toEqual({ userId: 'cat', distanceM: 6500 })
  })

  it('withdrawing consent takes a runner off the public board but keeps their private rank', async () => {
    await lb.update(ev, 'cat', 6500, false)
    expect((await lb.top(ev, 10)).top.map((e) => e.userId)).toEqual(['amy', 'dan'])
    expect((await lb.ranks(ev, ['cat'])).get('cat')).toBe(2)
  })

  it('ties are ordered the same way in both implementations', async () => {
    const e2 = `${ev}t`
    for (const u of ['x1', 'x3', 'x2']) await lb.update(e2, u, 100, true)
    expect((await lb.top(e2, 3)).top.map((e) => e.userId)).toEqual(['x3', 'x2', 'x1'])
  })

  it('remove forgets a runner (erasure)', async () => {
    await lb.remove(ev, 'ben')
    expect((await lb.top(ev, 10)).runners).toBe(3)
    expect((await lb.ranks(ev, ['ben'])).size).toBe(0)
  })
})
