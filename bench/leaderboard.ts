// Leaderboard refresh cost for a 50,000-runner event: what one tick of the output engine does per event
// (public top N + every runner's private rank for their live snapshot), on the in-process board and on Redis.
// Run: npm run build && node dist/bench/leaderboard.js [--runners 50000] [--rounds 20] [--redis redis://127.0.0.1:6379]
import { parseArgs } from 'node:util'
import { type LeaderboardStore, MemoryLeaderboard, RedisLeaderboard } from '../src/outputs/leaderboard.js'

const { values } = parseArgs({
  options: {
    runners: { type: 'string', default: '50000' },
    rounds: { type: 'string', default: '20' },
    redis: { type: 'string', default: 'redis://127.0.0.1:6379' },
  },
})
const N = Number(values.runners)
const ROUNDS = Number(values.rounds)

function cpuMs(start: NodeJS.CpuUsage): number {
  const u = process.cpuUsage(start)
  return (u.user + u.system) / 1000
}

async function measure(name: string, lb: LeaderboardStore, eventId: string) {
  const users = Array.from({ length: N }, (_, i) => `runner${i}`)
  const dist = new Float64Array(N)
  let t = performance.now()
  for (let i = 0; i < N; i++) dist[i] = Math.random() * 5000
  await Promise.all(users.map((u, i) => lb.update(eventId, u, dist[i] as number, i % 5 !== 0)))
  const loadMs = performance.now() - t
  const refresh: number[] = []
  const refreshCpu: number[] = []
  const updateCpu: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    // One second of a race: every runner moves a little (one update each), then the tick publishes.
    for (let i = 0; i < N; i++) dist[i] = (dist[i] as number) + 3 + Math.random()
    const c0 = process.cpuUsage()
    await Promise.all(users.map((u, i) => lb.update(eventId, u, dist[i] as number, i % 5 !== 0)))
    updateCpu.push(cpuMs(c0))
    const c1 = process.cpuUsage()
    t = performance.now()
    const top = await lb.top(eventId, 10)
    const ranks = await lb.ranks(eventId, users)
    refresh.push(performance.now() - t)
    refreshCpu.push(cpuMs(c1))
    if (top.top.length !== 10 || ranks.size !== N) throw new Error('leaderboard incomplete')
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
  const p95 = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.95)] as number
  const res = {
    impl: name,
    runners: N,
    initialLoadMs: Math.round(loadMs),
    refreshWallMsMedian: +med(refresh).toFixed(1),
    refreshWallMsP95: +p95(refresh).toFixed(1),
    refreshCpuMsMedian: +med(refreshCpu).toFixed(1),
    updateAllCpuMsMedian: +med(updateCpu).toFixed(1),
  }
  console.log(
    `${name}: ${N} runners — refresh (top 10 + all ranks) median ${res.refreshWallMsMedian} ms wall / ${res.refreshCpuMsMedian} ms CPU (p95 ${res.refreshWallMsP95} ms); ${N} updates ${res.updateAllCpuMsMedian} ms CPU`,
  )
  return res
}

const results = []
const mem = new MemoryLeaderboard()
results.push(await measure('memory', mem, 'bench'))
await mem.close()
const redis = new RedisLeaderboard(values.redis, `pulsegate-bench-${process.pid}`)
results.push(await measure('redis', redis, 'bench'))
await redis.clear('bench')
await redis.close()
console.log(JSON.stringify({ bench: 'leaderboard', results }))
