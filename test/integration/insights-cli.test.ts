// `pulsegate insights run` offline against the embedded store (no broker): the day's rhr_elevated recommendation is
// stored and printed, a second run prints it as a redelivery with the same id, and bad arguments exit 2.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { createLogger } from '../../src/log.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { migrate } from '../../src/store/migrate.js'
import { recommendationId } from '../../src/insights/payload.js'
import { runCli as run } from '../helpers/cli.js'
import { tempDir } from '../helpers/harness.js'
import { datesBack, grantRecommendations, seedUser, writeDays } from '../helpers/wellness.js'

vi.setConfig({ testTimeout: 240_000 })

describe('pulsegate insights run', () => {
  const dataDir = tempDir('pulsegate-insights-cli-')
  const env = {
    PULSEGATE_DATA_DIR: dataDir,
    PULSEGATE_LOG_LEVEL: 'silent',
    PULSEGATE_JWT_SECRET: 'test-secret-0123456789abcdef',
    PULSEGATE_INSIGHTS_MIN_SAMPLES_PER_MINUTE: '1',
  }
  beforeAll(async () => {
    Object.assign(process.env, env)
    const log = createLogger('silent')
    const db = await openEmbedded(dataDir, log)
    try {
      await migrate(db, log)
      const key = await seedUser(db, 'alice')
      const dates = datesBack('2026-03-26', 11)
      await writeDays(
        db,
        key,
        'UTC',
        dates.map((date, i) => ({ date, nightHr: i >= 9 ? 60 : 53, steps: 0, worn: false })),
      )
      await grantRecommendations(db, 'alice')
    } finally {
      await db.close()
    }
  }, 120_000)
  afterAll(() => {
    for (const k of Object.keys(env)) delete process.env[k]
  })

  it('stores and prints the recommendation; a second run redelivers the same id', async () => {
    const args = ['insights', 'run', '--user', 'alice', '--rule', 'rhr_elevated', '--at', '2026-03-26T08:00:00Z']
    const first = await run(...args)
    expect(first.code).toBe(0)
    const out = JSON.parse(first.out) as { live: boolean; delivered: { id: string; rule: string }[] }
    const id = recommendationId('alice', 'rhr_elevated', '2026-03-26')
    expect(out.live).toBe(false)
    expect(out.delivered.map((p) => [p.id, p.rule])).toEqual([[id, 'rhr_elevated']])
    const second = JSON.parse((await run(...args)).out) as { delivered: unknown[]; redelivered: { id: string }[] }
    expect(second.delivered).toEqual([])
    expect(second.redelivered.map((p) => p.id)).toEqual([id])
  })

  it('refuses an unknown rule and a bad instant with exit code 2', async () => {
    expect((await run('insights', 'run', '--rule', 'hrv_magic')).code).toBe(2)
    expect((await run('insights', 'run', '--at', 'tomorrow')).code).toBe(2)
  })
})
