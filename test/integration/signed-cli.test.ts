// Signed readings as an operator sets them up: `pki device --require-signed --encrypt` and `pki policy` through a
// running broker's admin RPC (it owns the embedded store), then the tracker itself (mTLS) sending with what it was
// given: its certificate's key and the content key file.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { encode } from 'cbor-x'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { encryptBatch, signBatch } from '../../src/pipeline/envelope.js'
import { runCli as run } from '../helpers/cli.js'
import { connectDevice, nextMessage, startTestBroker, type TestBroker } from '../helpers/harness.js'

describe('pulsegate pki device --require-signed --encrypt, pki policy (live broker)', () => {
  let tb: TestBroker
  beforeAll(async () => {
    tb = await startTestBroker('embedded')
    process.env.PULSEGATE_DATA_DIR = tb.dataDir
    process.env.PULSEGATE_LOG_LEVEL = 'silent'
    process.env.PULSEGATE_JWT_SECRET = 'test-secret-0123456789abcdef'
  }, 60_000)
  afterAll(async () => {
    await tb?.stop()
  })

  const count = async (t0: number) => {
    const r = await tb.pg.db.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key)
       WHERE d.device_id = 'cli-sig' AND s.time >= to_timestamp($1 / 1000.0) AND s.time < to_timestamp($1 / 1000.0 + 60)`,
      [t0],
    )
    return r.rows[0]?.n ?? 0
  }

  it('provisions, refuses plain readings under the policy, takes sealed ones, and the policy can be lifted', async () => {
    const r = await run('pki', 'device', 'cli-sig', '--user', 'erin', '--require-signed', '--encrypt')
    expect(r.code, r.err).toBe(0)
    expect(r.out).toMatch(/signed readings required/)
    const dir = path.join(tb.dataDir, 'pki', 'devices')
    const cekFile = path.join(dir, 'cli-sig.cek')
    expect(fs.statSync(cekFile).mode & 0o777).toBe(0o600)
    const contentKey = Buffer.from(fs.readFileSync(cekFile, 'utf8').trim(), 'base64')
    expect(contentKey).toHaveLength(32)
    const creds = {
      deviceId: 'cli-sig',
      cert: fs.readFileSync(path.join(dir, 'cli-sig.crt'), 'utf8'),
      key: fs.readFileSync(path.join(dir, 'cli-sig.key'), 'utf8'),
    }
    const c = await connectDevice(tb, creds)
    try {
      await c.subscribeAsync('devices/cli-sig/rejections', { qos: 1 })
      const t0 = Date.now() - 600_000
      const plain = Buffer.from(
        encode({
          seq: 1,
          samples: [
            { t: t0, hr: 70 },
            { t: t0 + 1000, hr: 71 },
          ],
        }),
      )
      const rejected = nextMessage(c, 'devices/cli-sig/rejections', 30_000)
      await c.publishAsync('devices/cli-sig/readings', plain, { qos: 1 })
      expect(JSON.parse((await rejected).payload.toString())).toMatchObject({ reason: 'unsigned' })
      expect(await count(t0)).toBe(0)

      const sealed = await encryptBatch(
        await signBatch(plain, 'cli-sig', crypto.createPrivateKey(creds.key)),
        'cli-sig',
        contentKey,
      )
      await c.publishAsync('devices/cli-sig/readings', sealed, { qos: 1 })
      expect(await count(t0)).toBe(2)

      const lifted = await run('pki', 'policy', 'cli-sig', '--allow-unsigned')
      expect(lifted.code, lifted.err).toBe(0)
      const t1 = t0 + 120_000
      await c.publishAsync('devices/cli-sig/readings', encode({ seq: 2, samples: [{ t: t1, hr: 72 }] }), { qos: 1 })
      expect(await count(t1)).toBe(1)
    } finally {
      await c.endAsync()
    }
    expect((await run('pki', 'policy', 'cli-sig')).code).toBe(2)
    expect((await run('pki', 'policy', 'nobody', '--require-signed')).code).not.toBe(0)
  })
})
