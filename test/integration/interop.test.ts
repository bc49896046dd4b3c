// Interoperability with a client we did not write: Eclipse Mosquitto's command-line clients (Debian
// mosquitto-clients) publish with a device certificate over mTLS and subscribe with a JWT over TCP.
import { type ChildProcess, execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { generateCa } from '../../src/identity/pki.js'
import {
  connectDevice,
  type DeviceCreds,
  provisionDevice,
  type TestBroker,
  startTestBroker,
  tempDir,
  token,
} from '../helpers/harness.js'

const MOSQUITTO_PUB = '/usr/bin/mosquitto_pub'
const MOSQUITTO_SUB = '/usr/bin/mosquitto_sub'
const HAVE_MOSQUITTO = fs.existsSync(MOSQUITTO_PUB) && fs.existsSync(MOSQUITTO_SUB)
// In CI a missing client is a broken image, not a reason to skip: the suite runs and fails loudly.
const RUN = HAVE_MOSQUITTO || Boolean(process.env.CI)

interface Run {
  code: number | null
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
}

/** Runs a mosquitto client to completion; never rejects on a non-zero exit (the tests judge the code). */
function run(file: string, args: string[], timeoutMs = 15_000): { done: Promise<Run>; child: ChildProcess } {
  let child!: ChildProcess
  const done = new Promise<Run>((resolve, reject) => {
    child = execFile(file, args, { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: NodeJS.Signals }) | null
      if (e && typeof e.code === 'string') {
        reject(new Error(`${file} could not run (${e.code}): install mosquitto-clients`))
        return
      }
      resolve({ code: e ? ((e.code as number | undefined) ?? null) : 0, signal: e?.signal ?? null, stdout, stderr })
    })
  })
  return { done, child }
}

let tb: TestBroker
let dev: DeviceCreds
let dir: string
const files = { ca: '', crt: '', key: '', wrongCa: '' }
const clients: MqttClient[] = []

beforeAll(async () => {
  if (!RUN) return
  expect(HAVE_MOSQUITTO, `${MOSQUITTO_PUB} and ${MOSQUITTO_SUB} are required (apt-get install mosquitto-clients)`).toBe(
    true,
  )
  tb = await startTestBroker('postgres')
  dev = await provisionDevice(tb, 'mosq-1', 'alice')
  dir = tempDir('pulsegate-mosq-')
  files.ca = path.join(dir, 'ca.crt')
  files.crt = path.join(dir, 'device.crt')
  files.key = path.join(dir, 'device.key')
  files.wrongCa = path.join(dir, 'wrong-ca.crt')
  fs.writeFileSync(files.ca, tb.ca)
  fs.writeFileSync(files.crt, dev.cert)
  fs.writeFileSync(files.key, dev.key, { mode: 0o600 })
  fs.writeFileSync(files.wrongCa, (await generateCa('not the pulsegate CA')).certPem)
})

afterAll(async () => {
  await Promise.all(clients.map((c) => c.endAsync(true).catch(() => {})))
  await tb?.stop()
  if (dir) fs.rmSync(dir, { recursive: true, force: true })
})

async function storedSamples(deviceId: string): Promise<number> {
  const res = await tb.pg.db.query<{ n: number }>(
    'SELECT count(*)::int AS n FROM samples s JOIN devices d USING (device_key) WHERE d.device_id = $1',
    [deviceId],
  )
  return res.rows[0]?.n ?? -1
}

/** mosquitto_pub as the device: one QoS 1 batch to its readings topic over the mTLS listener. */
function mosquittoPub(opts: { seq: number; samples: object[]; host?: string; cafile?: string; withCert?: boolean }) {
  const { host = 'localhost', cafile = files.ca, withCert = true } = opts
  const cert = withCert ? ['--cert', files.crt, '--key', files.key] : []
  const message = JSON.stringify({ seq: opts.seq, samples: opts.samples })
  const topic = `devices/${dev.deviceId}/readings`
  return run(MOSQUITTO_PUB, [
    ...['-h', host, '-p', String(tb.pg.ports.mqtts), '--cafile', cafile, ...cert],
    ...['-i', dev.deviceId, '-q', '1', '-t', topic, '-m', message],
  ]).done
}

describe.runIf(RUN)('Mosquitto clients', () => {
  it('mosquitto_pub with the device certificate publishes a QoS 1 batch that is committed on PUBACK', async () => {
    expect(await storedSamples(dev.deviceId)).toBe(0)
    const r = await mosquittoPub({ seq: 1, samples: [{ t: Date.now() - 1000, hr: 72 }] })
    expect(r, r.stderr).toMatchObject({ code: 0 })
    // mosquitto_pub exits after the PUBACK, and the PUBACK follows the commit: the row is there now.
    expect(await storedSamples(dev.deviceId)).toBe(1)
  })

  it('the server certificate also verifies for 127.0.0.1 (IP SAN)', async () => {
    const t = Date.now() - 500
    const r = await mosquittoPub({
      seq: 2,
      host: '127.0.0.1',
      samples: [
        { t, hr: 74 },
        { t, spo2: 98 },
      ],
    })
    expect(r, r.stderr).toMatchObject({ code: 0 })
    expect(await storedSamples(dev.deviceId)).toBe(3)
  })

  it('mosquitto_sub as the owner app receives the rejection of an out-of-range sample', async () => {
    const jwt = await token(tb, 'alice', 'app')
    const clientId = 'app:alice:mosq'
    const topic = `devices/${dev.deviceId}/rejections`
    // mosquitto_sub's stdout is block-buffered into a pipe, so its own output cannot tell us when it has subscribed:
    // the broker's 'subscribe' event does (emitted once the subscription is in place).
    const subscribed = new Promise<void>((resolve) => {
      const on = (subs: { topic: string }[], client: { id: string } | null) => {
        if (client?.id !== clientId || !subs.some((s) => s.topic === topic)) return
        tb.pg.broker.off('subscribe', on)
        resolve()
      }
      tb.pg.broker.on('subscribe', on)
    })
    // -W counts from mosquitto_sub's start and spans its connect, the device's TLS connect and the publish: a bound
    // for a loaded machine (10 s was not), as is run()'s kill timeout above it.
    const sub = run(
      MOSQUITTO_SUB,
      [
        ...['-h', '127.0.0.1', '-p', String(tb.pg.ports.mqtt), '-i', clientId, '-u', 'jwt', '-P', jwt],
        ...['-q', '1', '-t', topic, '-C', '1', '-W', '40'],
      ],
      50_000,
    )
    const exitedEarly = sub.done.then((r) => Promise.reject(new Error(`mosquitto_sub exited: ${r.stderr}${r.stdout}`)))
    await Promise.race([subscribed, exitedEarly])

    const device = await connectDevice(tb, dev)
    clients.push(device)
    const batch = JSON.stringify({ seq: 3, samples: [{ t: Date.now() - 100, hr: 400 }] })
    await device.publishAsync(`devices/${dev.deviceId}/readings`, batch, { qos: 1 })
    const r = await sub.done
    expect(r, r.stderr).toMatchObject({ code: 0 })
    expect(JSON.parse(r.stdout.trim())).toEqual({ seq: 3, reason: 'out_of_range', field: 'hr', index: 0 })
    await device.endAsync()
    expect(await storedSamples(dev.deviceId)).toBe(3)
  }, 60_000)

  it('mosquitto_pub trusting another CA refuses the server certificate and exits non-zero', async () => {
    const r = await mosquittoPub({ seq: 4, cafile: files.wrongCa, samples: [{ t: Date.now() - 50, hr: 80 }] })
    expect(r.code).not.toBe(0)
    expect(r.code, 'killed by our timeout instead of failing').not.toBeNull()
    expect(r.stderr).toMatch(/certificate verify failed|tls|ssl/i)
    expect(await storedSamples(dev.deviceId)).toBe(3)
  })

  it('mosquitto_pub without a client certificate is refused at the handshake', async () => {
    const r = await mosquittoPub({ seq: 5, withCert: false, samples: [{ t: Date.now() - 40, hr: 80 }] })
    expect(r.code).not.toBe(0)
    expect(r.code, 'killed by our timeout instead of failing').not.toBeNull()
    expect(await storedSamples(dev.deviceId)).toBe(3)
  })
})
