// App-side convergence (issue #14): a small swarm with devices that go offline (they buffer and upload late) and apps
// that drop their link and reconnect. Each app keeps a local copy (live alerts + commit-order delta sync); at the end
// every copy must equal the database for its user: 0 missing, 0 extra, 0 duplicated.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { AppCopyWire } from '../../simulators/app-copy.js'
import { compareAppCopies } from '../../simulators/app-verify.js'
import { runSwarm, type SwarmReport } from '../../simulators/swarm.js'
import { startTestBroker, type TestBroker } from '../helpers/harness.js'

describe('simulator: apps converge on the database', () => {
  let tb: TestBroker
  let report: SwarmReport

  beforeAll(async () => {
    tb = await startTestBroker('postgres')
    report = await runSwarm({
      broker: tb.pg,
      devices: 40,
      durationS: 10,
      rampPerS: 100,
      appShare: 0.6,
      anomalyShare: 0,
      bridgeShare: 0.1,
      // a tunnel at 3 s for 3 s: their devices buffer and upload samples older than what apps already synced
      offline: { share: 0.3, atS: 3, forS: 3 },
      appReconnects: 2,
      drainS: 60,
      idPrefix: 'conv',
      progress: false,
    })
  }, 180_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('every app holds exactly what the database holds for its user', () => {
    expect(report.verification.status, JSON.stringify(report.verification)).toBe('ok')
    const a = report.appConvergence
    expect(a.status, JSON.stringify(a)).toBe('ok')
    expect(a.apps).toBeGreaterThan(0)
    expect(a.apps).toBe(report.connections.apps.attempts)
    expect(a.rows).toBeGreaterThan(report.readings.acked / 4)
    expect([a.missing, a.extra, a.duplicated, a.incomplete]).toEqual([0, 0, 0, 0])
    // the run did what it is meant to test: late uploads and apps that came back
    expect(report.offline.cuts).toBeGreaterThan(0)
    expect(report.offline.samplesBufferedWhileOffline).toBeGreaterThan(0)
    expect(report.counters.appDrops).toBeGreaterThan(0)
  })

  it('the comparison sees a copy that lacks rows, holds rows the database has not, or got a row twice', async () => {
    const user = await tb.pg.db.query<{ user_id: string }>(
      `SELECT d.user_id FROM samples s JOIN devices d USING (device_key) WHERE d.device_id LIKE 'conv-%' LIMIT 1`,
    )
    const userId = user.rows[0]?.user_id as string
    const copy: AppCopyWire = {
      userId,
      cursor: '0',
      items: [['r:conv-nonexistent/hr/1', '']],
      duplicates: 1,
      syncs: 1,
      incomplete: false,
    }
    const c = await compareAppCopies(tb.pg.db, [copy])
    expect(c.status).toBe('failed')
    expect(c.missing).toBeGreaterThan(0)
    expect(c.extra).toBe(1)
    expect(c.duplicated).toBe(1)
  })
})
