// Readings signed by the tracker and relayed by a phone bridge (JWT), end to end on a real broker and store: the
// pipeline verifies against the registered certificate before validation, records signed batches, refuses altered,
// unsigned-under-policy and cross-device replays with a reason and a metric, and opens encrypted batches.
import crypto from 'node:crypto'
import path from 'node:path'
import { encode } from 'cbor-x'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { newContentKey, wrapContentKey } from '../../src/identity/content-key.js'
import { DeviceKeyCache } from '../../src/identity/device-keys.js'
import { generateCa, issueCertWithCa, issueDeviceCert } from '../../src/identity/pki.js'
import { createLogger } from '../../src/log.js'
import { keyId } from '../../src/ops/keys.js'
import type { Db, Queryable } from '../../src/store/db.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { Registry } from '../../src/store/registry.js'
import { encryptBatch, signBatch } from '../../src/pipeline/envelope.js'
import { bumpHeartRates } from '../helpers/cose.js'
import {
  connectWithToken,
  createTestDatabase,
  type StoreKind,
  startTestBroker,
  type TestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'

const stores: StoreKind[] = ['postgres', 'embedded']

interface SigningDevice {
  deviceId: string
  privateKey: crypto.KeyObject
}

describe.each(stores)('signed readings on %s', (store) => {
  let tb: TestBroker
  let bridge: MqttClient
  let watch: SigningDevice
  let strap: SigningDevice
  const rejections: { topic: string; reason: string }[] = []
  let seq = 0
  let base = Date.now() - 3 * 3600_000

  const provision = async (deviceId: string, userId: string): Promise<SigningDevice> => {
    const issued = await issueDeviceCert(path.join(tb.dataDir, 'pki'), deviceId)
    await tb.pg.registry.registerDevice({
      deviceId,
      userId,
      fingerprint: issued.fingerprint256,
      certPem: issued.certPem,
    })
    return { deviceId, privateKey: crypto.createPrivateKey(issued.keyPem) }
  }
  const rpc = async (body: Record<string, unknown>): Promise<Record<string, unknown>> => {
    const jwt = await token(tb, 'ops', 'admin')
    const res = await fetch(`http://127.0.0.1:${tb.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    const json = (await res.json()) as Record<string, unknown>
    if (!res.ok) throw new Error(`rpc ${String(body.op)}: ${res.status} ${JSON.stringify(json)}`)
    return json
  }
  const batch = (n = 5, hr = 100) => {
    base += 120_000
    const t0 = base
    return {
      t0,
      bytes: Buffer.from(
        encode({ seq: ++seq, samples: Array.from({ length: n }, (_, i) => ({ t: t0 + i * 1000, hr: hr + i })) }),
      ),
    }
  }
  const stored = async (deviceId: string, t0: number) => {
    const r = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key)
       WHERE d.device_id = $1 AND s.time >= to_timestamp($2 / 1000.0) AND s.time < to_timestamp($2 / 1000.0 + 60)`,
      [deviceId, t0],
    )
    return r.rows[0]?.n ?? 0
  }
  const signedRows = async (deviceId: string, t0: number) => {
    const r = await tb.pg.db.query<{ samples: number; encrypted: boolean }>(
      `SELECT b.samples, b.encrypted FROM signed_batches b JOIN devices d USING (device_key)
       WHERE d.device_id = $1 AND b.first_time = to_timestamp($2 / 1000.0)`,
      [deviceId, t0],
    )
    return r.rows
  }
  const metric = async (name: string, labels: Record<string, string>) =>
    metricValue(await tb.pg.metrics.registry.getSingleMetricAsString(name), name, labels)
  /** Publishes and waits for the rejection it must cause on the device's rejections topic. */
  const refused = async (deviceId: string, payload: Buffer): Promise<string> => {
    const before = rejections.length
    await bridge.publishAsync(`devices/${deviceId}/readings`, payload, { qos: 1 })
    const r = await waitFor(
      () => rejections.slice(before).find((x) => x.topic === `devices/${deviceId}/rejections`),
      30_000,
    )
    return r.reason
  }

  beforeAll(async () => {
    tb = await startTestBroker(store, { ingest: { deadLetterIntervalMs: 0 } })
    watch = await provision('sig-watch', 'sig-u1')
    strap = await provision('sig-strap', 'sig-u1')
    bridge = await connectWithToken(tb, await token(tb, 'sig-u1', 'bridge'), 'bridge:sig-u1:1')
    bridge.on('message', (topic, payload) => {
      rejections.push({ topic, reason: (JSON.parse(payload.toString()) as { reason: string }).reason })
    })
    await bridge.subscribeAsync(['devices/sig-watch/rejections', 'devices/sig-strap/rejections'], { qos: 1 })
  }, 120_000)
  afterAll(async () => {
    await bridge?.endAsync()
    await tb?.stop()
  })

  it('a signed batch relayed by a bridge is stored and recorded as signed', async () => {
    const { t0, bytes } = batch(5)
    await bridge.publishAsync('devices/sig-watch/readings', await signBatch(bytes, watch.deviceId, watch.privateKey), {
      qos: 1,
    })
    expect(await stored('sig-watch', t0)).toBe(5)
    expect(await signedRows('sig-watch', t0)).toEqual([{ samples: 5, encrypted: false }])
    expect(await metric('pulsegate_ingest_envelopes_total', { kind: 'sign1', result: 'accepted' })).toBeGreaterThan(0)
    // A plain batch of a device without the policy is still taken, and is not recorded as signed.
    const plain = batch(3)
    await bridge.publishAsync('devices/sig-watch/readings', plain.bytes, { qos: 1 })
    expect(await stored('sig-watch', plain.t0)).toBe(3)
    expect(await signedRows('sig-watch', plain.t0)).toEqual([])
  })

  it('an altered signed batch is refused with bad_signature, counted, and nothing of it is stored', async () => {
    const before = await metric('pulsegate_ingest_samples_rejected_total', { reason: 'bad_signature' })
    const { t0, bytes } = batch(5)
    const altered = bumpHeartRates(await signBatch(bytes, watch.deviceId, watch.privateKey), 30)
    expect(await refused('sig-watch', altered)).toBe('bad_signature')
    expect(await stored('sig-watch', t0)).toBe(0)
    expect(await metric('pulsegate_ingest_samples_rejected_total', { reason: 'bad_signature' })).toBe(before + 1)
    expect(
      await metric('pulsegate_ingest_envelopes_total', { kind: 'sign1', result: 'bad_signature' }),
    ).toBeGreaterThan(0)
  })

  it("a signed batch replayed on another device's topic is refused; on its own device it is a duplicate", async () => {
    const { t0, bytes } = batch(4)
    const signed = await signBatch(bytes, watch.deviceId, watch.privateKey)
    await bridge.publishAsync('devices/sig-watch/readings', signed, { qos: 1 })
    expect(await stored('sig-watch', t0)).toBe(4)
    expect(await refused('sig-strap', signed)).toBe('device_mismatch')
    expect(await stored('sig-strap', t0)).toBe(0)
    const dupBefore = await metric('pulsegate_ingest_duplicates_total', { where: 'seq_window' })
    await bridge.publishAsync('devices/sig-watch/readings', signed, { qos: 1 })
    expect(await stored('sig-watch', t0)).toBe(4)
    expect(await signedRows('sig-watch', t0)).toHaveLength(1)
    expect(await metric('pulsegate_ingest_duplicates_total', { where: 'seq_window' })).toBe(dupBefore + 4)
  })

  it('policy "signed readings required" (admin RPC): unsigned refused, signed still taken, and lifted again', async () => {
    await rpc({ op: 'setDevicePolicy', deviceId: 'sig-strap', signedRequired: true })
    const plain = batch(3)
    expect(await refused('sig-strap', plain.bytes)).toBe('unsigned')
    expect(await stored('sig-strap', plain.t0)).toBe(0)
    expect(await metric('pulsegate_ingest_samples_rejected_total', { reason: 'unsigned' })).toBeGreaterThan(0)
    const signed = batch(3)
    await bridge.publishAsync(
      'devices/sig-strap/readings',
      await signBatch(signed.bytes, strap.deviceId, strap.privateKey),
      {
        qos: 1,
      },
    )
    expect(await stored('sig-strap', signed.t0)).toBe(3)
    await rpc({ op: 'setDevicePolicy', deviceId: 'sig-strap', signedRequired: false })
    const again = batch(2)
    await bridge.publishAsync('devices/sig-strap/readings', again.bytes, { qos: 1 })
    expect(await stored('sig-strap', again.t0)).toBe(2)
  })

  it('encrypted (content key provisioned by RPC): accepted and recorded encrypted; another key refused', async () => {
    const res = await rpc({ op: 'provisionContentKey', deviceId: 'sig-watch' })
    const key = Buffer.from(String(res.contentKey), 'base64')
    expect(key).toHaveLength(32)
    // At rest the device record holds the key wrapped only.
    const row = await tb.pg.db.query<{ content_key: Uint8Array }>(
      "SELECT content_key FROM devices WHERE device_id = 'sig-watch'",
    )
    expect(Buffer.from(row.rows[0]?.content_key ?? []).includes(key)).toBe(false)
    const { t0, bytes } = batch(6)
    const sealed = await encryptBatch(await signBatch(bytes, watch.deviceId, watch.privateKey), watch.deviceId, key)
    await bridge.publishAsync('devices/sig-watch/readings', sealed, { qos: 1 })
    expect(await stored('sig-watch', t0)).toBe(6)
    expect(await signedRows('sig-watch', t0)).toEqual([{ samples: 6, encrypted: true }])
    const other = batch(2)
    const wrong = await encryptBatch(
      await signBatch(other.bytes, watch.deviceId, watch.privateKey),
      watch.deviceId,
      crypto.randomBytes(32),
    )
    expect(await refused('sig-watch', wrong)).toBe('decrypt_failed')
    expect(await stored('sig-watch', other.t0)).toBe(0)
  })

  it('a rotated certificate (registerDevice RPC, as `pki device` does): the cached key goes at once', async () => {
    const old = watch
    // The old key verifies (and is cached from here on).
    const first = batch(2)
    await bridge.publishAsync(
      'devices/sig-watch/readings',
      await signBatch(first.bytes, old.deviceId, old.privateKey),
      {
        qos: 1,
      },
    )
    expect(await stored('sig-watch', first.t0)).toBe(2)
    const issued = await issueDeviceCert(path.join(tb.dataDir, 'pki'), 'sig-watch')
    // A PEM that is not the registered fingerprint's certificate is refused outright.
    await expect(
      rpc({
        op: 'registerDevice',
        deviceId: 'sig-watch',
        userId: 'sig-u1',
        fingerprint: 'AA:BB',
        certPem: issued.certPem,
      }),
    ).rejects.toThrow(/409/)
    await rpc({
      op: 'registerDevice',
      deviceId: 'sig-watch',
      userId: 'sig-u1',
      fingerprint: issued.fingerprint256,
      certPem: issued.certPem,
    })
    watch = { deviceId: 'sig-watch', privateKey: crypto.createPrivateKey(issued.keyPem) }
    // The old key was cached; it must not verify any more.
    const a = batch(2)
    expect(await refused('sig-watch', await signBatch(a.bytes, old.deviceId, old.privateKey))).toBe('bad_signature')
    const b = batch(2)
    await bridge.publishAsync(
      'devices/sig-watch/readings',
      await signBatch(b.bytes, watch.deviceId, watch.privateKey),
      {
        qos: 1,
      },
    )
    expect(await stored('sig-watch', b.t0)).toBe(2)
  })
})

describe('device key cache (PostgreSQL)', () => {
  let database: { url: string; drop(): Promise<void> }
  let db: Db
  let queries = 0
  const wrap = (() => {
    const bytes = crypto.randomBytes(32)
    return { bytes, id: keyId(bytes), origin: 'test' }
  })()

  beforeAll(async () => {
    database = await createTestDatabase()
    db = openPostgres(database.url, 2, createLogger('silent'))
    await migrate(db, createLogger('silent'))
  }, 60_000)
  afterAll(async () => {
    await db?.close()
    await database?.drop()
  })

  it('loads misses together, parses each certificate once, forgets on demand, and keeps a bad key to its device', async () => {
    const registry = new Registry(db)
    const ca = await generateCa('cache CA')
    const ids = Array.from({ length: 30 }, (_, i) => `kc-${i}`)
    for (const id of ids) {
      const c = await issueCertWithCa(ca.certPem, ca.keyPem, id)
      await registry.registerDevice({ deviceId: id, userId: 'kc-u', fingerprint: c.fingerprint256, certPem: c.certPem })
    }
    await registry.setWrappedContentKey('kc-1', wrapContentKey(wrap, 'kc-1', newContentKey()))
    // kc-2's content key is kc-1's wrapped blob: bound to kc-1, it must not unwrap for kc-2.
    await registry.setWrappedContentKey('kc-2', wrapContentKey(wrap, 'kc-1', newContentKey()))
    const counting: Queryable = {
      query: (sql, params) => {
        queries++
        return db.query(sql, params)
      },
    }
    const cache = new DeviceKeyCache(counting, () => wrap)
    const wanted = ids.filter((id) => id !== 'kc-2')
    const all = await Promise.all(wanted.map((id) => cache.get(id)))
    expect(queries).toBe(1)
    expect(cache.parsed).toBe(wanted.length)
    expect(all.every((m) => m.verifyKey !== null && !m.signedRequired)).toBe(true)
    expect(all[1]?.contentKey).toHaveLength(32)
    // Cached: synchronous, no query, no parse.
    const again = cache.get('kc-0')
    expect(again instanceof Promise).toBe(false)
    expect(queries).toBe(1)
    await expect(Promise.resolve(cache.get('kc-2'))).rejects.toThrow(/does not unwrap/)
    expect(queries).toBe(2)
    await registry.setSignedRequired('kc-0', true)
    expect((cache.get('kc-0') as { signedRequired: boolean }).signedRequired).toBe(false)
    cache.forget('kc-0')
    expect((await cache.get('kc-0')).signedRequired).toBe(true)
    // kc-2 was parsed too (its content key failed after), and kc-0 once more after forget()
    expect(cache.parsed).toBe(wanted.length + 2)
    // Re-registration: a policy given is set, one left out is kept; a new certificate without its PEM clears it.
    const c0 = await issueCertWithCa(ca.certPem, ca.keyPem, 'kc-3')
    await registry.registerDevices([
      { deviceId: 'kc-3', userId: 'kc-u', fingerprint: c0.fingerprint256, signedRequired: true },
    ])
    const row = async () =>
      (
        await db.query<{ signed_required: boolean; has_pem: boolean }>(
          "SELECT signed_required, cert_pem IS NOT NULL AS has_pem FROM devices WHERE device_id = 'kc-3'",
        )
      ).rows[0]
    expect(await row()).toEqual({ signed_required: true, has_pem: false })
    await registry.registerDevices([
      { deviceId: 'kc-3', userId: 'kc-u', fingerprint: c0.fingerprint256, certPem: c0.certPem },
    ])
    expect(await row()).toEqual({ signed_required: true, has_pem: true })
    // Another owner's registration changes nothing of it (refused whole).
    await expect(
      registry.registerDevices([{ deviceId: 'kc-3', userId: 'kc-other', fingerprint: 'AA', signedRequired: false }]),
    ).rejects.toThrow(/another user/)
    expect(await row()).toEqual({ signed_required: true, has_pem: true })
    const c1 = await issueCertWithCa(ca.certPem, ca.keyPem, 'kc-3')
    await registry.registerDevices([{ deviceId: 'kc-3', userId: 'kc-u', fingerprint: c1.fingerprint256 }])
    expect(await row()).toEqual({ signed_required: true, has_pem: false })
    // An unknown device needs nothing and offers nothing.
    expect(await cache.get('nobody')).toEqual({ verifyKey: null, signedRequired: false, contentKey: null })
  })
})
