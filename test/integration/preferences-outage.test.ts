// Preferences while PostgreSQL is gone (cut through a real TCP proxy): an edit the database did not take gets no
// PUBACK — the connection closes, as for readings — so the app still holds it; resent once the database is back, it
// is merged and published exactly as if it had arrived the first time.
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, expect, it } from 'vitest'
import type { PreferencesStateMessage } from '../../src/insights/preferences/crdt.js'
import { formatHlc, HlcClock } from '../../src/insights/preferences/hlc.js'
import { connectWithToken, type TestBroker, startTestBroker, subackCode, token, waitFor } from '../helpers/harness.js'
import { type ProxiedDatabase, type TcpProxy, testDatabaseBehindProxy } from '../helpers/tcp-proxy.js'

let tb: TestBroker
let proxy: TcpProxy
let database: ProxiedDatabase
const opened: MqttClient[] = []

beforeAll(async () => {
  database = await testDatabaseBehindProxy()
  proxy = database.proxy
  tb = await startTestBroker('postgres', {}, { dbUrl: database.url })
}, 60_000)
afterAll(async () => {
  proxy?.restore()
  await Promise.all(opened.map((c) => c.endAsync(true).catch(() => {})))
  await tb?.stop()
  await database?.close()
})

async function storeErrors(): Promise<number> {
  const { values } = await (await tb.pg.metrics.registry.getSingleMetric(
    'pulsegate_preferences_store_errors_total',
  ))!.get()
  return values[0]?.value ?? 0
}

it('no PUBACK while the database is gone; the resent edit is merged once it is back', async () => {
  const jwt = await token(tb, 'dana', 'app')
  const phone = await connectWithToken(tb, jwt, 'app:dana:phone', 'ws-header')
  opened.push(phone)
  expect(await subackCode(phone, 'users/dana/preferences/state')).toBe(1)
  const clock = new HlcClock('phone-1')
  const message = JSON.stringify({
    node: 'phone-1',
    edits: [{ field: 'mutedRules.R10', value: true, hlc: formatHlc(clock.now()) }],
  })

  proxy.cut()
  const outcome = await new Promise<{ acked: boolean; closed: boolean }>((resolve) => {
    let acked = false
    phone.publish('users/dana/preferences', message, { qos: 1 }, (err) => {
      if (!err) acked = true
    })
    phone.once('close', () => resolve({ acked, closed: true }))
  })
  expect(outcome).toEqual({ acked: false, closed: true })
  expect(await storeErrors()).toBeGreaterThanOrEqual(1)
  expect(tb.pg.preferences.get('dana').mutedRules).toEqual([])

  proxy.restore()
  // The app reconnects and resends what was never acknowledged (MQTT.js would, with its outgoing store).
  const again = await connectWithToken(tb, jwt, 'app:dana:phone', 'ws-header')
  opened.push(again)
  const states: PreferencesStateMessage[] = []
  again.on('message', (_t, p) => states.push(JSON.parse(p.toString()) as PreferencesStateMessage))
  expect(await subackCode(again, 'users/dana/preferences/state')).toBe(1)
  await again.publishAsync('users/dana/preferences', message, { qos: 1 })
  expect(tb.pg.preferences.get('dana').mutedRules).toEqual(['R10'])
  await waitFor(() => states.at(-1)?.state['mutedRules.R10'] === true)
  const rows = await tb.pg.db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM user_preferences WHERE user_id = 'dana'`,
  )
  expect(rows.rows[0]?.n).toBe(1)
})
