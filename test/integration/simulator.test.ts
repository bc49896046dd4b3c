import { describe, expect, it } from 'vitest'
import { runSwarm } from '../../simulators/swarm.js'
import { tempDir } from '../helpers/harness.js'
import { loadConfig } from '../../broker.config.js'

describe('smoke', () => {
  it('runs', async () => {
    const dataDir = tempDir()
    const report = await runSwarm({
      devices: 20,
      durationS: 5,
      embeddedBroker: true,
      config: loadConfig({ dataDir, logLevel: 'warn', jwt: { secret: 'test-secret-0123456789abcdef' } }, {}),
      progress: false,
      drainS: 10,
      anomalyShare: 0.1,
      appShare: 0.5,
    })
    console.log(JSON.stringify({ ...report, timeline: undefined }, null, 1))
    expect(report.verification.status).toBe('ok')
  }, 120_000)
})
