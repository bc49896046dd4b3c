// The control plane (src/cluster/control-plane.ts, migration 0013): changes written straight to PostgreSQL by the CLI
// (another process's write, no broker in the loop) reach two running brokers on that database through LISTEN/NOTIFY
// and cut the sessions they no longer allow. Real PostgreSQL, real mTLS and MQTT clients, the real CLI in process.
// Conditions are waited for with generous bounds; the measured delays are printed, never asserted (the machine is
// shared): the design makes them a few milliseconds.
import fs from 'node:fs'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import pg from 'pg'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { issueDeviceCert } from '../../src/identity/pki.js'
import type { AlertMessage, LeaderboardMessage } from '../../src/outputs/payloads.js'
import {
  connackCode,
  connectDevice,
  connectWithToken,
  type DeviceCreds,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  subackCode,
  token,
  waitFor,
} from '../helpers/harness.js'
import { runCli } from '../helpers/cli.js'

const SECRET = 'test-secret-0123456789abcdef'

/** The CLI as an operator runs it against the server: PULSEGATE_DATABASE_URL, no broker. */
async function cli(tb: TestBroker, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const vars: Record<string, string> = {
    PULSEGATE_DATA_DIR: tb.dataDir,
    PULSEGATE_DATABASE_URL: tb.dbUrl as string,
    PULSEGATE_JWT_SECRET: SECRET,
    PULSEGATE_LOG_LEVEL: 'silent',
  }
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  Object.assign(process.env, vars)
  try {
    const r = await runCli(...args)
    if (r.code !== 0) throw new Error(`pulsegate ${args.join(' ')} exited ${r.code}: ${r.err}`)
    return r
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
}

/** When the client's connection closed: resolves at that moment (waitFor bounds the wait). */
function closed(c: MqttClient): Promise<number> {
  let at = 0
  c.once('close', () => {
    at = Date.now()
  })
  return waitFor(() => at, 30_000)
}

function collect<T>(client: MqttClient, topic: string): T[] {
  const out: T[] = []
  client.on('message', (t, p) => {
    if (t === topic && p.length > 0) out.push(JSON.parse(p.toString()) as T)
  })
  return out
}

async function metric(tb: TestBroker, name: string, labels: Record<string, string> = {}): Promise<number> {
  const m = await tb.pg.metrics.registry.getSingleMetric(name)?.get()
  return (m?.values ?? [])
    .filter((v) => Object.entries(labels).every(([k, x]) => String(v.labels[k]) === x))
    .reduce((a, v) => a + v.value, 0)
}

/** Prints how long after the CLI command started the effect was seen (the CLI itself opens the store, migrates,
 * commits, audits and closes it: the effect usually lands before it has returned). */
function report(what: string, cli: { started: number; returned: number }, at: number): void {
  console.log(
    `control plane: ${what}: ${at - cli.started} ms after the CLI started (it returned after ${cli.returned - cli.started} ms)`,
  )
}

async function timedCli(tb: TestBroker, ...args: string[]) {
  const started = Date.now()
  const r = await cli(tb, ...args)
  return { ...r, started, returned: Date.now() }
}

/** Positions of a runner moving north at `mps` over 50 s, with HR. */
function run(from: number, mps: number): Record<string, number>[] {
  const out: Record<string, number>[] = []
  for (let k = 0; k <= 10; k++)
    out.push(
      { t: from + k * 5000, lat: 52.4 + (mps * k * 5) / 111_195, lon: 13.3, acc: 4 },
      { t: from + k * 5000 + 1, hr: 150 },
    )
  return out
}

/** A stopped runner without HR for two minutes: the event's medics are alerted (stopped_abnormal). */
function collapse(now: number): Record<string, number>[] {
  const s: Record<string, number>[] = [{ t: now - 150_000, hr: 160 }]
  for (let t = now - 120_000; t <= now; t += 5000) s.push({ t, lat: 52.52, lon: 13.405, acc: 5 })
  return s
}

describe('control plane: two brokers on one PostgreSQL, the CLI writing to it directly', { timeout: 120_000 }, () => {
  let a: TestBroker
  let b: TestBroker
  const ev = 'race-ctl'

  beforeAll(async () => {
    a = await startTestBroker('postgres')
    // The second broker shares the database, the PKI and the keys (one deployment, two processes' worth of state).
    b = await startTestBroker('postgres', {}, { dataDir: a.dataDir, dbUrl: a.dbUrl as string })
    await a.pg.registry.createEvent({ eventId: ev, distanceM: 42195, startsAt: new Date(Date.now() - 3600_000) })
  }, 90_000)
  afterAll(async () => {
    await b?.stop()
    await a?.stop()
  })

  it('both brokers listen (not the in-process fallback)', () => {
    expect(a.pg.control.mode).toBe('notify')
    expect(b.pg.control.mode).toBe('notify')
    expect(a.pg.control.listenerPid).not.toBeNull()
  })

  it('pki revoke by the CLI cuts the device on both brokers and refuses its reconnects', async () => {
    const dev = await provisionDevice(a, 'trk-rev', 'u-rev')
    const onA = await connectDevice(a, dev)
    const onB = await connectDevice(b, dev)
    // The owner's bridge on B relays for the device: its ownership look-up is cached (30 s) from this publish.
    const bridge = await connectWithToken(b, await token(b, 'u-rev', 'bridge'), 'bridge:u-rev')
    const reading = (seq: number) => JSON.stringify({ seq, samples: [{ t: Date.now() - 1000 * seq, hr: 70 }] })
    await bridge.publishAsync(`devices/${dev.deviceId}/readings`, reading(1), { qos: 1 })
    const cutA = closed(onA)
    const cutB = closed(onB)
    const t = await timedCli(a, 'pki', 'revoke', dev.deviceId)
    const [ta, tb] = await Promise.all([cutA, cutB])
    report('revocation → session cut on broker A', t, ta)
    report('revocation → session cut on broker B', t, tb)
    expect(await connackCode(connectDevice(a, dev))).toBe(5)
    expect(await connackCode(connectDevice(b, dev))).toBe(5)
    expect(await metric(a, 'pulsegate_control_sessions_cut_total', { reason: 'certificate' })).toBeGreaterThanOrEqual(1)
    // The bridge's next batch for the revoked device is refused (a refused publish closes the connection).
    const bridgeCut = closed(bridge)
    bridge.publish(`devices/${dev.deviceId}/readings`, reading(2), { qos: 1 })
    await bridgeCut
    expect(await metric(b, 'pulsegate_control_notifications_total', { kind: 'device' })).toBeGreaterThanOrEqual(1)
  })

  it('re-registration with a new certificate by the CLI cuts the old one everywhere; the new one connects', async () => {
    const old = await provisionDevice(a, 'trk-rereg', 'u-rereg')
    // Both brokers have the old certificate's verdict cached from these connects.
    const onA = await connectDevice(a, old)
    const onB = await connectDevice(b, old)
    const cuts = Promise.all([closed(onA), closed(onB)])
    const r = await timedCli(a, 'pki', 'device', old.deviceId, '--user', old.userId)
    report('re-registration → old certificate cut on both brokers', r, Math.max(...(await cuts)))
    const certPath = /certificate: (\S+)/.exec(r.out)?.[1] as string
    const keyPath = /key: +(\S+)/.exec(r.out)?.[1] as string
    const fresh = {
      deviceId: old.deviceId,
      cert: fs.readFileSync(certPath, 'utf8'),
      key: fs.readFileSync(keyPath, 'utf8'),
    }
    expect(await connackCode(connectDevice(a, old))).toBe(5)
    expect(await connackCode(connectDevice(b, old))).toBe(5)
    expect(await connackCode(connectDevice(a, fresh))).toBe(0)
    expect(await connackCode(connectDevice(b, fresh))).toBe(0)
  })

  it('consent withdrawn by the CLI: off the next leaderboard, and no more alert copies to the medics', async () => {
    const leader = await provisionDevice(a, 'trk-lead', 'u-lead')
    const second = await provisionDevice(a, 'trk-second', 'u-second')
    const fallen = await provisionDevice(a, 'trk-fallen', 'u-fallen')
    const control = await provisionDevice(a, 'trk-control', 'u-control')
    for (const d of [leader, second, fallen, control])
      await a.pg.registry.joinEvent(ev, d.userId, { consentLeaderboard: true })

    const viewer = await connectWithToken(a, await token(a, 'u-second', 'app'), 'app:u-second', 'ws-header')
    expect(await subackCode(viewer, `events/${ev}/leaderboard`)).toBe(1)
    const boards = collect<LeaderboardMessage>(viewer, `events/${ev}/leaderboard`)
    const medic = await connectWithToken(a, await token(a, 'doc', 'medic', [ev]), 'medic:doc', 'ws-header')
    expect(await subackCode(medic, `events/${ev}/alerts`)).toBe(1)
    const medicAlerts = collect<AlertMessage>(medic, `events/${ev}/alerts`)
    const own = await connectWithToken(a, await token(a, 'u-fallen', 'app'), 'app:u-fallen', 'ws-header')
    expect(await subackCode(own, 'users/u-fallen/alerts')).toBe(1)
    expect(await subackCode(own, 'users/u-fallen/consent/state')).toBe(1)
    const ownAlerts = collect<AlertMessage>(own, 'users/u-fallen/alerts')
    const states = collect<{ consents: Record<string, boolean> }>(own, 'users/u-fallen/consent/state')

    // Two run (the board holds them); the other two send a heart rate. The broker loads (and caches) everyone's
    // consent with their first batch: without the control plane it would keep answering from that cache.
    const now = Date.now()
    for (const [d, samples] of [
      [leader, run(now - 400_000, 4)],
      [second, run(now - 400_000, 3)],
      [fallen, [{ t: now - 200_000, hr: 150 }]],
      [control, [{ t: now - 200_000, hr: 150 }]],
    ] as const) {
      const c = await connectDevice(a, d)
      await c.publishAsync(`devices/${d.deviceId}/readings`, JSON.stringify({ seq: 1, samples }), { qos: 1 })
      await c.endAsync()
    }
    await waitFor(() => boards.some((m) => m.top.some((e) => e.userId === 'u-lead')))

    const seen = boards.length
    const t = await timedCli(a, 'users', 'consent', 'u-lead', 'leaderboard', 'off')
    await waitFor(() => boards.slice(seen).some((m) => m.top.length > 0 && !m.top.some((e) => e.userId === 'u-lead')))
    report('leaderboard withdrawal → a board without the runner (boards go out once a second)', t, Date.now())
    const t2 = await timedCli(a, 'users', 'consent', 'u-fallen', 'medical_alerts', 'off')
    // The retained consent state follows, as for a change through the broker.
    await waitFor(() => states.some((s) => s.consents.medical_alerts === false))
    report('medical_alerts withdrawal → retained consent/state updated', t2, Date.now())

    // The withdrawn runner collapses: their own app is alerted, the medics are not; a consenting runner's alert,
    // produced after it, does reach the medics (so the withdrawn one would have arrived first had it been sent).
    const withheld = await metric(a, 'pulsegate_outputs_withheld_total', { output: 'event_alerts' })
    const f = await connectDevice(a, fallen)
    await f.publishAsync(`devices/${fallen.deviceId}/readings`, JSON.stringify({ seq: 2, samples: collapse(now) }), {
      qos: 1,
    })
    await waitFor(() => ownAlerts.some((x) => x.kind === 'stopped_abnormal'))
    await waitFor(
      async () => (await metric(a, 'pulsegate_outputs_withheld_total', { output: 'event_alerts' })) > withheld,
    )
    const c = await connectDevice(a, control)
    await c.publishAsync(`devices/${control.deviceId}/readings`, JSON.stringify({ seq: 2, samples: collapse(now) }), {
      qos: 1,
    })
    await waitFor(() => medicAlerts.some((x) => x.userId === 'u-control'))
    expect(medicAlerts.filter((x) => x.userId === 'u-fallen')).toEqual([])
    await Promise.all([f.endAsync(), c.endAsync(), viewer.endAsync(), medic.endAsync(), own.endAsync()])
  })

  it('erasure by the CLI cuts the person’s sessions on both brokers and refuses their old token', async () => {
    const dev = await provisionDevice(a, 'trk-erase', 'u-erase')
    const jwt = await token(a, 'u-erase', 'app')
    const devOnA = await connectDevice(a, dev)
    const appOnB = await connectWithToken(b, jwt, 'app:u-erase', 'ws-header')
    const appOnA = await connectWithToken(a, jwt, 'app:u-erase:2', 'tcp')
    const cuts = Promise.all([closed(devOnA), closed(appOnB), closed(appOnA)])
    const r = await timedCli(a, 'users', 'erase', 'u-erase', '--yes')
    expect(JSON.parse(r.out.slice(r.out.indexOf('{')))).toMatchObject({ userId: 'u-erase', found: true })
    report('erasure → the three sessions cut on both brokers', r, Math.max(...(await cuts)))
    expect(await connackCode(connectDevice(a, dev))).toBe(5)
    expect(await connackCode(connectWithToken(b, jwt, 'app:u-erase', 'ws'))).toBe(5)
    expect(await connackCode(connectWithToken(a, jwt, 'app:u-erase', 'tcp'))).toBe(5)
  })

  it('an unreadable notification is counted and ignored; the next change still applies', async () => {
    const invalid = await metric(a, 'pulsegate_control_notifications_total', { kind: 'invalid' })
    const dev = await provisionDevice(a, 'trk-bad', 'u-bad')
    const conn = await connectDevice(a, dev)
    const cut = closed(conn)
    await a.pg.db.query(
      `SELECT pg_notify('pulsegate_control', 'not json'), pg_notify('pulsegate_control', '{"k":"x"}')`,
    )
    await waitFor(
      async () => (await metric(a, 'pulsegate_control_notifications_total', { kind: 'invalid' })) >= invalid + 2,
    )
    await cli(a, 'pki', 'revoke', dev.deviceId)
    await cut
  })

  it('a killed LISTEN session reconnects (caches flushed) and a later revocation still cuts', async () => {
    const dev = await provisionDevice(a, 'trk-kill', 'u-kill')
    const conn = await connectDevice(a, dev)
    const pid = a.pg.control.listenerPid as number
    const reconnects = await metric(a, 'pulsegate_control_listener_reconnects_total')
    const flushes = await metric(a, 'pulsegate_control_cache_flushes_total', { reason: 'reconnect' })
    const admin = new pg.Client({ connectionString: a.dbUrl as string })
    await admin.connect()
    try {
      const killed = await admin.query<{ ok: boolean }>('SELECT pg_terminate_backend($1) AS ok', [pid])
      expect(killed.rows[0]?.ok).toBe(true)
    } finally {
      await admin.end()
    }
    await waitFor(async () => (await metric(a, 'pulsegate_control_listener_reconnects_total')) > reconnects)
    await waitFor(
      async () => (await metric(a, 'pulsegate_control_cache_flushes_total', { reason: 'reconnect' })) > flushes,
    )
    expect(a.pg.control.listenerPid).not.toBe(pid)
    // The device was not cut by the flush: its certificate is still good.
    expect(conn.connected).toBe(true)
    const cut = closed(conn)
    const t = await timedCli(a, 'pki', 'revoke', dev.deviceId)
    report('revocation after a listener reconnect → session cut', t, await cut)
    expect(await connackCode(connectDevice(a, dev))).toBe(5)
  })
})

describe('control plane: embedded store', { timeout: 60_000 }, () => {
  let e: TestBroker
  let dev: DeviceCreds
  beforeAll(async () => {
    e = await startTestBroker('embedded')
    dev = await provisionDevice(e, 'trk-emb', 'u-emb')
  }, 90_000)
  afterAll(async () => {
    await e?.stop()
  })

  it('runs in-process (one process owns the store) and a revocation through the broker still cuts at once', async () => {
    expect(e.pg.control.mode).toBe('in-process')
    expect(await metric(e, 'pulsegate_control_listening')).toBe(0)
    const conn = await connectDevice(e, dev)
    const cut = closed(conn)
    const res = await fetch(`http://127.0.0.1:${e.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(e, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify({ op: 'revokeDevice', deviceId: dev.deviceId }),
    })
    expect(res.status).toBe(200)
    await cut
    expect(await connackCode(connectDevice(e, dev))).toBe(5)
  })

  it('a re-registration with a new certificate through the broker cuts the old one at once', async () => {
    const old = await provisionDevice(e, 'trk-emb2', 'u-emb')
    const conn = await connectDevice(e, old)
    const cut = closed(conn)
    const issued = await issueDeviceCert(path.join(e.dataDir, 'pki'), old.deviceId)
    const res = await fetch(`http://127.0.0.1:${e.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(e, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify({
        op: 'registerDevice',
        deviceId: old.deviceId,
        userId: old.userId,
        fingerprint: issued.fingerprint256,
      }),
    })
    expect(res.status).toBe(200)
    await cut
    expect(await connackCode(connectDevice(e, old))).toBe(5)
    const fresh = { deviceId: old.deviceId, cert: issued.certPem, key: issued.keyPem }
    expect(await connackCode(connectDevice(e, fresh))).toBe(0)
  })
})
