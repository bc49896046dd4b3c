// The database admission gate (src/store/lanes.ts, issue #16): pure scheduling logic, driven with real async work
// whose completion the test controls, so every ordering asserted here is the gate's and not a timer's luck.
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import { defaults } from '../../broker.config.js'
import { type Db, DbOverloadError, isConnectionError, type LaneName } from '../../src/store/db.js'
import { DEFAULT_LANE_SETTINGS, LaneGate, type LaneSettings, withLanes } from '../../src/store/lanes.js'

/** work that runs until the test releases it */
function held(): { work: () => Promise<void>; started: Promise<void>; finish(): void; fail(err: Error): void } {
  let begin: () => void = () => {}
  let end: () => void = () => {}
  let failWith: (e: Error) => void = () => {}
  const started = new Promise<void>((r) => {
    begin = r
  })
  const done = new Promise<void>((resolve, reject) => {
    end = resolve
    failWith = reject
  })
  return {
    started,
    work: () => {
      begin()
      return done
    },
    finish: () => end(),
    fail: (e) => failWith(e),
  }
}

const tick = () => new Promise<void>((r) => setImmediate(r))

function settings(over: Partial<LaneSettings> = {}): LaneSettings {
  return { ...DEFAULT_LANE_SETTINGS, ...over }
}

describe('LaneGate', () => {
  it('admits at most capacity at once; a freed slot goes to the highest-priority lane, FIFO within a lane', async () => {
    const gate = new LaneGate(2, settings())
    const a = held()
    const b = held()
    const runA = gate.run('background', a.work)
    const runB = gate.run('background', b.work)
    await Promise.all([a.started, b.started])
    expect(gate.running).toBe(2)

    const order: string[] = []
    const queued = (lane: LaneName, name: string) => gate.run(lane, async () => void order.push(name))
    const all = [
      queued('background', 'bg1'),
      queued('sync', 'sync1'),
      queued('identity', 'id1'),
      queued('outputs', 'out1'),
      queued('commit', 'commit1'),
      queued('identity', 'id2'),
      queued('commit', 'commit2'),
    ]
    await tick()
    expect(order).toEqual([])
    expect(gate.waiting('identity')).toBe(2)

    a.finish()
    b.finish()
    await Promise.all([runA, runB, ...all])
    expect(order).toEqual(['commit1', 'commit2', 'id1', 'id2', 'out1', 'sync1', 'bg1'])
    expect(gate.running).toBe(0)
  })

  it('a lane over its queue bound refuses at once with a DbOverloadError that callers treat as unavailable', async () => {
    const gate = new LaneGate(1, settings({ identity: { queue: 2, waitMs: 60_000 } }))
    const a = held()
    const runA = gate.run('commit', a.work)
    await a.started
    const waiting = [gate.run('identity', async () => 1), gate.run('identity', async () => 2)]
    const err = await gate.run('identity', async () => 3).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(DbOverloadError)
    expect((err as Error).message).toBe('database busy: lane identity queue full (2 waiting)')
    expect(isConnectionError(err)).toBe(true)
    // Another lane's bound is its own.
    const other = gate.run('commit', async () => 4)
    a.finish()
    expect(await Promise.all([runA, ...waiting, other])).toEqual([undefined, 1, 2, 4])
  })

  it('a wait over the lane bound refuses; the ones behind it still run, in order', async () => {
    const gate = new LaneGate(1, settings({ sync: { queue: 10, waitMs: 30 } }))
    const a = held()
    const runA = gate.run('commit', a.work)
    await a.started
    const late = gate.run('sync', async () => 'late').catch((e: unknown) => e)
    const err = await late
    expect(err).toBeInstanceOf(DbOverloadError)
    expect((err as DbOverloadError).reason).toBe('wait_timeout')
    expect((err as Error).message).toMatch(/^database busy: lane sync wait exceeded/)
    expect(gate.waiting('sync')).toBe(0)
    const next = gate.run('sync', async () => 'next')
    a.finish()
    await runA
    expect(await next).toBe('next')
    expect(gate.running).toBe(0)
  })

  it('a slot is released when the work throws', async () => {
    const gate = new LaneGate(1, settings())
    const a = held()
    const runA = gate.run('outputs', a.work)
    await a.started
    const next = gate.run('outputs', async () => 'ran')
    a.fail(new Error('bad statement'))
    await expect(runA).rejects.toThrow('bad statement')
    expect(await next).toBe('ran')
    expect(gate.running).toBe(0)
  })

  it('timed-out waiters left in a long queue are skipped, not run, and do not count against the bound', async () => {
    const gate = new LaneGate(1, settings({ background: { queue: 3000, waitMs: 20 } }))
    const a = held()
    const runA = gate.run('commit', a.work)
    await a.started
    let ran = 0
    const expired = Array.from({ length: 2500 }, () => gate.run('background', async () => void ran++).catch(() => 'x'))
    expect(await Promise.all(expired)).toEqual(expired.map(() => 'x'))
    expect(gate.waiting('background')).toBe(0)
    const survivors = Array.from({ length: 3000 }, (_, i) => gate.run('background', async () => i))
    a.finish()
    await runA
    expect(await Promise.all(survivors)).toEqual(survivors.map((_, i) => i))
    expect(ran).toBe(0)
  })

  it('metrics: depth while waiting, a wait observed per admission, refusals by lane and reason', async () => {
    const reg = new Registry()
    const metrics = {
      depth: new Gauge({ name: 'd', help: 'd', labelNames: ['lane'], registers: [reg] }),
      wait: new Histogram({ name: 'w', help: 'w', labelNames: ['lane'], registers: [reg] }),
      rejected: new Counter({ name: 'r', help: 'r', labelNames: ['lane', 'reason'], registers: [reg] }),
    }
    const gate = new LaneGate(1, settings({ identity: { queue: 1, waitMs: 60_000 } }), metrics)
    const a = held()
    const runA = gate.run('commit', a.work)
    await a.started
    const waiting = gate.run('identity', async () => {})
    await gate.run('identity', async () => {}).catch(() => {})
    const value = async (name: string, labels: Record<string, string>, series = name) =>
      (await reg.getSingleMetric(name)?.get())?.values.find(
        (v) =>
          ((v as { metricName?: string }).metricName ?? name) === series &&
          Object.entries(labels).every(([k, l]) => (v.labels as Record<string, string>)[k] === l),
      )?.value
    expect(await value('d', { lane: 'identity' })).toBe(1)
    expect(await value('r', { lane: 'identity', reason: 'queue_full' })).toBe(1)
    a.finish()
    await Promise.all([runA, waiting])
    expect(await value('d', { lane: 'identity' })).toBe(0)
    expect(await value('w', { lane: 'identity' }, 'w_count')).toBe(1)
  })

  it('the configured defaults are the gate defaults', () => {
    expect(defaults().databaseLanes).toEqual(DEFAULT_LANE_SETTINGS)
  })
})

describe('withLanes', () => {
  /** a store whose statements and transactions run until the test releases them (what runs where is recorded) */
  function store(capacity: number) {
    const log: string[] = []
    const pending: Array<() => void> = []
    const wait = () => new Promise<void>((r) => pending.push(r))
    const raw: Omit<Db, 'lane'> = {
      kind: 'postgres',
      maxConcurrency: capacity,
      async query<R>(sql: string) {
        log.push(sql)
        await wait()
        return { rows: [] as R[], rowCount: 0 }
      },
      async transaction<T>(fn: (q: { query: Db['query'] }) => Promise<T>) {
        log.push('BEGIN')
        return fn(raw)
      },
      async exec(sql) {
        log.push(sql)
      },
      async close() {},
    }
    return { raw, log, pending }
  }

  it('a transaction holds one slot from start to end; its statements do not queue behind the gate', async () => {
    const { raw, log, pending } = store(1)
    const db = withLanes(raw)
    const tx = db.lane('commit').transaction(async (q) => {
      await q.query('tx 1')
      await q.query('tx 2')
      return 'committed'
    })
    const other = db.lane('identity').query('look-up')
    await tick()
    expect(log).toEqual(['BEGIN', 'tx 1'])
    pending.shift()?.()
    await tick()
    expect(log).toEqual(['BEGIN', 'tx 1', 'tx 2'])
    pending.shift()?.()
    expect(await tx).toBe('committed')
    await tick()
    expect(log).toEqual(['BEGIN', 'tx 1', 'tx 2', 'look-up'])
    pending.shift()?.()
    await other
  })

  it('views share one gate: the plain Db is the background lane, below every named one', async () => {
    const { raw, log, pending } = store(1)
    const db = withLanes(raw)
    expect(db.lane('background').lane('sync')).toBe(db.lane('sync'))
    const first = db.lane('outputs').query('first')
    const plain = db.query('plain')
    const sync = db.lane('sync').query('sync')
    await tick()
    pending.shift()?.()
    await first
    await tick()
    pending.shift()?.()
    await sync
    await tick()
    pending.shift()?.()
    await plain
    expect(log).toEqual(['first', 'sync', 'plain'])
  })
})
