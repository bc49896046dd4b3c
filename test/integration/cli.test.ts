// The command line as an operator uses it: against the embedded store directly, and against a running broker that
// owns the embedded store (through its admin RPC). Exit codes and messages are part of the contract.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { main } from '../../src/cli/main.js'
import { Tokens } from '../../src/identity/tokens.js'
import { connackCode, connectDevice, type TestBroker, startTestBroker, tempDir } from '../helpers/harness.js'
import fs from 'node:fs'
import path from 'node:path'
import { runCli as run } from '../helpers/cli.js'

describe('pulsegate CLI', () => {
  const dataDir = tempDir('pulsegate-cli-')
  beforeAll(() => {
    process.env.PULSEGATE_DATA_DIR = dataDir
    process.env.PULSEGATE_LOG_LEVEL = 'silent'
    process.env.PULSEGATE_JWT_SECRET = 'test-secret-0123456789abcdef'
  })

  it('token prints a JWT that verifies, with the role and events asked for', async () => {
    const r = await run('token', 'doc1', '--role', 'medic', '--events', 'e1,e2', '--ttl', '15m')
    expect(r.code).toBe(0)
    const p = await new Tokens({
      dataDir,
      jwt: { secret: 'test-secret-0123456789abcdef', issuer: 'pulsegate', audience: 'pulsegate' },
    }).verify(r.out.trim())
    expect(p).toMatchObject({ role: 'medic', userId: 'doc1', events: ['e1', 'e2'] })
  })

  it('usage errors say what was wrong and exit 2', async () => {
    expect((await run('token', 'doc1', '--role', 'wizard')).code).toBe(2)
    const bad = await run('token', 'not valid!', '--role', 'app')
    expect(bad.code).toBe(2)
    expect(bad.err).toMatch(/invalid user id/)
    expect((await run('token', 'x', '--role', 'app', '--ttl', 'forever')).err).toMatch(/invalid --ttl/)
    expect((await run('event', 'join', 'e1', 'u1', '--consent', 'marketing')).err).toMatch(/unknown consent/)
  })

  it('every command has --help', async () => {
    for (const cmd of [
      [],
      ['start'],
      ['migrate'],
      ['pki', 'init'],
      ['pki', 'device'],
      ['pki', 'revoke'],
      ['token'],
      ['event', 'create'],
      ['event', 'join'],
      ['users'],
      ['users', 'add'],
      ['users', 'consent'],
      ['users', 'consents'],
      ['users', 'erase'],
      ['insights', 'run'],
    ]) {
      const writes: string[] = []
      const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
        writes.push(String(s))
        return true
      })
      const code = await main(['node', 'pulsegate', ...cmd, '--help'])
      spy.mockRestore()
      expect(code).toBe(0)
      expect(writes.join('')).toMatch(/Usage: pulsegate/)
    }
  })

  it('a wrong configuration value is refused by name', async () => {
    process.env.PULSEGATE_MQTT_PORT = 'abc'
    const r = await run('migrate')
    delete process.env.PULSEGATE_MQTT_PORT
    expect(r.code).toBe(2)
    expect(r.err).toMatch(/PULSEGATE_MQTT_PORT/)
  })

  it('pki device, event create/join and migrate work on the embedded store', async () => {
    const dev = await run('pki', 'device', 'cli-trk-1', '--user', 'carol')
    expect(dev.code).toBe(0)
    expect(fs.existsSync(path.join(dataDir, 'pki', 'devices', 'cli-trk-1.crt'))).toBe(true)
    expect(dev.out).toMatch(/mosquitto_pub/)
    expect((await run('event', 'create', 'cli-race', '--public', '--distance', '42195')).code).toBe(0)
    expect((await run('event', 'join', 'cli-race', 'carol', '--consent', 'leaderboard')).code).toBe(0)
    expect((await run('event', 'join', 'no-such-event', 'carol')).err).toMatch(/does not exist/)
    expect((await run('pki', 'revoke', 'nobody')).code).toBe(2)
    expect((await run('migrate')).out).toMatch(/migrations: 0 applied/)
    // A budget for CPU-bound work, not a wait: ~15 s of CPU (the first command creates the embedded TimescaleDB,
    // ~9 s; each further one opens it, ~1.2 s), which took 56-62 s of wall-clock time at load 19 on 2 cores.
  }, 180_000)
})

describe('pulsegate CLI against a running broker that owns the embedded store', () => {
  let tb: TestBroker
  beforeAll(async () => {
    tb = await startTestBroker('embedded')
    process.env.PULSEGATE_DATA_DIR = tb.dataDir
  }, 60_000)
  afterAll(async () => {
    await tb?.stop()
  })

  it('registers a device live (admin RPC) and the device can connect at once; revoke cuts it off', async () => {
    const r = await run('pki', 'device', 'live-trk', '--user', 'dave')
    expect(r.code, r.err).toBe(0)
    const dir = path.join(tb.dataDir, 'pki', 'devices')
    const creds = {
      deviceId: 'live-trk',
      cert: fs.readFileSync(path.join(dir, 'live-trk.crt'), 'utf8'),
      key: fs.readFileSync(path.join(dir, 'live-trk.key'), 'utf8'),
    }
    const c = await connectDevice(tb, creds)
    const closed = new Promise<void>((res) => c.once('close', () => res()))
    expect((await run('pki', 'revoke', 'live-trk')).code).toBe(0)
    await closed
    expect(await connackCode(connectDevice(tb, creds))).toBe(5)
    expect((await run('migrate')).out).toMatch(/running broker owns/)
  })
})
