// Against Aedes' own in-memory persistence: exact-topic answers from the index equal what the scan would give.
import { createRequire } from 'node:module'
import { describe, expect, it } from 'vitest'
import { indexRetained, type RetainedPacket, type RetainedPersistence } from '../../src/outputs/retained-index.js'

// The package is CommonJS whose typings declare an ESM default export; require() is what Aedes itself gets.
const memory = createRequire(import.meta.url)('aedes-persistence') as () => RetainedPersistence

async function collect(p: RetainedPersistence, patterns: string[]): Promise<string[]> {
  const out: string[] = []
  for await (const packet of p.createRetainedStreamCombi(patterns)) {
    const r = packet as RetainedPacket
    out.push(`${r.topic}=${r.payload.toString()}`)
  }
  return out.sort()
}

const packet = (topic: string, payload: string) => ({
  cmd: 'publish' as const,
  topic,
  payload: Buffer.from(payload),
  qos: 1 as const,
  retain: true,
  dup: false,
})

describe('retained index', () => {
  it('answers exact topics from the index, wildcards from the scan, and honours clearing', async () => {
    const p = memory()
    indexRetained(p)
    await p.storeRetained(packet('users/a/live', 'a1'))
    await p.storeRetained(packet('users/b/live', 'b1'))
    await p.storeRetained(packet('users/a/live', 'a2'))
    await p.storeRetained(packet('events/e/leaderboard', 'top'))
    expect(await collect(p, ['users/a/live'])).toEqual(['users/a/live=a2'])
    expect(await collect(p, ['users/a/live', 'events/e/leaderboard', 'users/zz/live'])).toEqual([
      'events/e/leaderboard=top',
      'users/a/live=a2',
    ])
    expect(await collect(p, ['users/+/live'])).toEqual(['users/a/live=a2', 'users/b/live=b1'])
    await p.storeRetained(packet('users/a/live', ''))
    expect(await collect(p, ['users/a/live'])).toEqual([])
    expect(await collect(p, ['#'])).toEqual(['events/e/leaderboard=top', 'users/b/live=b1'])
  })
})
