// A sync request discloses a person's data, so it is answered only once its audit row is written: with the audit log
// failing (its table renamed away, a real failure of the INSERT), the app gets `unavailable` and no data; once the
// log works again the same request is answered, and audited.
import { afterAll, beforeAll, expect, it } from 'vitest'
import {
  connectDevice,
  connectWithToken,
  provisionDevice,
  startTestBroker,
  type TestBroker,
  token,
} from '../helpers/harness.js'

let tb: TestBroker
beforeAll(async () => {
  tb = await startTestBroker('postgres')
})
afterAll(async () => {
  await tb?.pg.db.query('ALTER TABLE IF EXISTS audit_log_away RENAME TO audit_log').catch(() => {})
  await tb?.stop()
})

it('a sync request whose audit row cannot be written gets unavailable, and no data', async () => {
  const dev = await provisionDevice(tb, 'sa-trk', 'sa-user')
  const d = await connectDevice(tb, dev)
  await d.publishAsync(
    'devices/sa-trk/readings',
    JSON.stringify({ seq: 1, samples: [{ t: Date.now() - 1000, hr: 70 }] }),
    {
      qos: 1,
    },
  )
  await d.endAsync()
  const app = await connectWithToken(tb, await token(tb, 'sa-user', 'app'), 'app:sa-user:1')
  await app.subscribeAsync('users/sa-user/sync/response', { qos: 1 })
  const answers: Record<string, unknown>[] = []
  const next = () =>
    new Promise<Record<string, unknown>>((resolve) =>
      app.once('message', (_t, p) => {
        const m = JSON.parse(p.toString()) as Record<string, unknown>
        answers.push(m)
        resolve(m)
      }),
    )

  await tb.pg.db.query('ALTER TABLE audit_log RENAME TO audit_log_away')
  let answer = next()
  await app.publishAsync('users/sa-user/sync/request', JSON.stringify({ requestId: 'r1', cursor: '0' }), { qos: 1 })
  expect(await answer).toEqual({ requestId: 'r1', error: 'unavailable', detail: 'audit log unavailable' })

  await tb.pg.db.query('ALTER TABLE audit_log_away RENAME TO audit_log')
  answer = next()
  await app.publishAsync('users/sa-user/sync/request', JSON.stringify({ requestId: 'r2', cursor: '0' }), { qos: 1 })
  const served = await answer
  expect(served['requestId']).toBe('r2')
  expect((served['readings'] as unknown[]).length).toBe(1)
  const rows = await tb.pg.db.query(`SELECT 1 FROM audit_log WHERE action = 'sync.request' AND subject = 'sa-user'`)
  expect(rows.rows).toHaveLength(1)
  expect(answers).toHaveLength(2)
  await app.endAsync()
})
