// The audit log on both stores: one valid chain from concurrent appenders, append-only tables, and `pulsegate audit
// verify` (the real CLI, as cli.test.ts runs it) catching a rewritten row, a cut-off tail and a forged checkpoint.
// Tampering is done as a superuser would: triggers disabled, rows changed, triggers re-enabled.
import crypto from 'node:crypto'
import fs from 'node:fs'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { type BrokerConfig, loadConfig } from '../../broker.config.js'
import { main } from '../../src/cli/main.js'
import { Tokens } from '../../src/identity/tokens.js'
import { createLogger } from '../../src/log.js'
import { createMetrics } from '../../src/metrics.js'
import { type AuditLog, checkpointFilePath, openAuditLog } from '../../src/ops/audit.js'
import { type AuditRow, atSql, chainHash, checkpointMessage } from '../../src/ops/audit-chain.js'
import { keyIdOf } from '../../src/ops/audit-keys.js'
import type { AuditEntry } from '../../src/ops/audit-types.js'
import { GroupCommitWriter } from '../../src/pipeline/commit.js'
import type { Db } from '../../src/store/db.js'
import { openEmbedded, updateEmbeddedLock } from '../../src/store/embedded.js'
import { migrate } from '../../src/store/migrate.js'
import { openPostgres } from '../../src/store/postgres.js'
import { Registry } from '../../src/store/registry.js'
import { createHttpRoutes } from '../../src/transport/http-routes.js'
import { createTestDatabase, type StoreKind, tempDir, waitFor } from '../helpers/harness.js'
import { runCli as cli } from '../helpers/cli.js'

const log = createLogger('silent')
const SECRET = 'test-secret-0123456789abcdef'

/** A fresh store of one kind, with the env the CLI reads pointing at it. */
interface Store {
  cfg: BrokerConfig
  db: Db
  audit: AuditLog
  /** the CLI opens the embedded store itself: this process lets go of it first, and takes it back after */
  cli(...args: string[]): Promise<{ code: number; out: string; err: string }>
  /** as a superuser: triggers off, statements, triggers on */
  tamper(...statements: string[]): Promise<void>
  dispose(): Promise<void>
}

async function openStore(kind: StoreKind): Promise<Store> {
  const dataDir = tempDir('pulsegate-audit-')
  const database = kind === 'postgres' ? await createTestDatabase() : null
  const cfg = loadConfig(
    { dataDir, ...(database ? { databaseUrl: database.url } : {}), logLevel: 'silent', jwt: { secret: SECRET } },
    {},
  )
  const open = async () => {
    const db = database ? openPostgres(database.url, 4, log) : await openEmbedded(dataDir, log)
    await migrate(db, log)
    return db
  }
  const env = () => {
    process.env.PULSEGATE_DATA_DIR = dataDir
    process.env.PULSEGATE_LOG_LEVEL = 'silent'
    process.env.PULSEGATE_JWT_SECRET = SECRET
    if (database) process.env.PULSEGATE_DATABASE_URL = database.url
    else delete process.env.PULSEGATE_DATABASE_URL
  }
  const s: Store = {
    cfg,
    db: await open(),
    audit: null as unknown as AuditLog,
    async cli(...args) {
      env()
      await s.audit.stop()
      await s.db.close()
      try {
        return await cli(...args)
      } finally {
        s.db = await open()
        s.audit = openAuditLog(s.db, cfg, log)
      }
    },
    async tamper(...statements) {
      await s.db.transaction(async (q) => {
        await q.query('ALTER TABLE audit_log DISABLE TRIGGER ALL')
        await q.query('ALTER TABLE audit_checkpoints DISABLE TRIGGER ALL')
        for (const sql of statements) await q.query(sql)
        await q.query('ALTER TABLE audit_log ENABLE TRIGGER ALL')
        await q.query('ALTER TABLE audit_checkpoints ENABLE TRIGGER ALL')
      })
    },
    async dispose() {
      await s.audit.stop()
      await s.db.close()
      await database?.drop()
      delete process.env.PULSEGATE_DATABASE_URL
    },
  }
  s.audit = openAuditLog(s.db, cfg, log)
  return s
}

function entry(i: number, actor = 'ops1'): AuditEntry {
  return {
    actor: { role: 'admin', id: actor },
    action: 'tap.readings',
    subject: `user-${i % 7}`,
    purpose: 'diagnostics',
    details: { i, topic: `users/user-${i % 7}/live` },
  }
}

async function count(db: Db, sql: string): Promise<number> {
  return Number((await db.query<{ n: string | number }>(sql)).rows[0]?.n)
}

describe.each(['postgres', 'embedded'] as const)('audit log on %s', (kind) => {
  let s: Store
  beforeAll(async () => {
    s = await openStore(kind)
  }, 60_000)
  afterAll(async () => {
    await s?.dispose()
  })

  it('records arriving together share a transaction, and details round-trip exactly through the hash', async () => {
    const tricky: AuditEntry = {
      actor: { role: 'cli', id: null },
      action: 'export',
      subject: 'u-7',
      purpose: 'export',
      details: { z: 1e21, a: [0.1, -0, 'é"\\\u2028😀'], m: { b: true, a: null }, n: 12345678901234567890n },
    }
    await Promise.all([...Array.from({ length: 200 }, (_, i) => s.audit.record(entry(i))), s.audit.record(tricky)])
    expect(await count(s.db, 'SELECT count(*) AS n FROM audit_log')).toBe(201)
    // One transaction per drain: 201 records made together land in very few (xmin differs per transaction).
    expect(await count(s.db, 'SELECT count(DISTINCT xmin::text) AS n FROM audit_log')).toBeLessThanOrEqual(3)
    const row = await s.db.query<{ details: string }>(`SELECT details FROM audit_log WHERE action = 'export'`)
    expect(row.rows[0]?.details).toBe(
      '{"a":[0.1,0,"é\\"\\\\\u2028😀"],"m":{"a":null,"b":true},"n":"12345678901234567890","z":1e+21}',
    )
    const v = await s.audit.verify()
    expect(v).toMatchObject({ ok: true, rows: 201, headSeq: 201, checkpoints: 0 })
  })

  it('refuses entries that are not pseudonymous, and leaves the chain alone', async () => {
    const before = await count(s.db, 'SELECT count(*) AS n FROM audit_log')
    await expect(s.audit.record({ ...entry(1), subject: 'alice@example.com' })).rejects.toThrow(/subject/)
    await expect(s.audit.record({ ...entry(1), actor: { role: 'admin', id: 'Alice Smith' } })).rejects.toThrow(/actor/)
    await expect(s.audit.record({ ...entry(1), action: 'Drop Table' })).rejects.toThrow(/invalid action/)
    expect(await count(s.db, 'SELECT count(*) AS n FROM audit_log')).toBe(before)
  })

  it('two appenders at once interleave into one valid chain', async () => {
    // On PostgreSQL a second pool is a second set of sessions (as a second process would be); the advisory lock is
    // what keeps them from reading the same head. The embedded store has one session, shared.
    const otherDb = kind === 'postgres' ? openPostgres(s.cfg.databaseUrl as string, 4, log) : s.db
    const other = openAuditLog(otherDb, s.cfg, log)
    try {
      for (let round = 0; round < 10; round++)
        await Promise.all(
          Array.from({ length: 20 }, (_, i) => [s.audit.record(entry(i, 'one')), other.record(entry(i, 'two'))]).flat(),
        )
    } finally {
      await other.stop()
      if (otherDb !== s.db) await otherDb.close()
    }
    const actors = (
      await s.db.query<{ actor_id: string }>(
        `SELECT actor_id FROM audit_log WHERE actor_id IN ('one', 'two') ORDER BY seq`,
      )
    ).rows.map((r) => r.actor_id)
    expect(actors.length).toBe(400)
    // Each round holds rows of both, so at least one switch per round: the two sessions' rows really interleave.
    const switches = actors.filter((a, i) => i > 0 && a !== actors[i - 1]).length
    expect(switches).toBeGreaterThanOrEqual(10)
    expect(await s.audit.verify()).toMatchObject({ ok: true, rows: 601 })
  })

  it('UPDATE, DELETE and TRUNCATE are refused on both tables', async () => {
    await s.audit.checkpoint()
    for (const table of ['audit_log', 'audit_checkpoints']) {
      await expect(s.db.query(`UPDATE ${table} SET seq = seq`)).rejects.toThrow(/append-only: UPDATE refused/)
      await expect(s.db.query(`DELETE FROM ${table} WHERE seq = 1 OR seq > 0`)).rejects.toThrow(
        /append-only: DELETE refused/,
      )
      await expect(s.db.query(`TRUNCATE ${table}`)).rejects.toThrow(/append-only: TRUNCATE refused/)
    }
    expect(await s.audit.verify()).toMatchObject({ ok: true, rows: 601, checkpoints: 2 })
  })

  it('a row rewritten by a superuser: audit verify exits 1 and names it; put back, it verifies again', async () => {
    const ok = await s.cli('audit', 'verify')
    expect(ok.code, ok.err).toBe(0)
    expect(ok.out).toMatch(/audit chain ok: 601 rows \(seq 1…601\), 2 checkpoint signatures valid/)

    const original = (await s.db.query<{ details: string }>('SELECT details FROM audit_log WHERE seq = 117')).rows[0]
    await s.tamper(`UPDATE audit_log SET details = '{"i":999}' WHERE seq = 117`)
    const broken = await s.cli('audit', 'verify')
    expect(broken.code).toBe(1)
    expect(broken.err).toMatch(/audit chain broken at seq 117: hash mismatch/)

    await s.tamper(`UPDATE audit_log SET details = $d$${original?.details}$d$ WHERE seq = 117`)
    expect((await s.cli('audit', 'verify')).code).toBe(0)
  }, 60_000)

  it('rows deleted from the middle are named, also when they span a whole page', async () => {
    await s.tamper(
      'CREATE TABLE audit_saved AS SELECT * FROM audit_log WHERE seq BETWEEN 201 AND 300',
      'DELETE FROM audit_log WHERE seq BETWEEN 201 AND 300',
    )
    const r = await s.cli('audit', 'verify')
    expect(r.code).toBe(1)
    expect(r.err).toMatch(/audit chain broken at seq 201: row missing \(the next row is seq 301\)/)
    // Pages of 100: the page 201…300 is empty, so the walk must look past it rather than take it for the end.
    expect(await s.audit.verify({ pageSize: 100 })).toMatchObject({ ok: false, seq: 201 })
    await s.tamper('INSERT INTO audit_log SELECT * FROM audit_saved', 'DROP TABLE audit_saved')
    expect(await s.audit.verify({ pageSize: 100 })).toMatchObject({ ok: true, rows: 601 })
  }, 60_000)

  it('deleting the last rows is caught by the checkpoint, and by the file copy when its rows are deleted too', async () => {
    await Promise.all(Array.from({ length: 10 }, (_, i) => s.audit.record(entry(i))))
    const cp = await s.audit.checkpoint()
    expect(cp?.seq).toBe(611)
    expect(fs.readFileSync(checkpointFilePath(s.cfg.dataDir), 'utf8').trim().split('\n')).toHaveLength(2)

    await s.tamper('DELETE FROM audit_log WHERE seq > 606')
    const cut = await s.cli('audit', 'verify')
    expect(cut.code).toBe(1)
    expect(cut.err).toMatch(/audit chain broken at seq 607: row missing: the chain ends at seq 606 .* covers seq 611/)

    // A superuser who also removes the checkpoint rows is still caught by the file outside the database.
    await s.tamper('DELETE FROM audit_checkpoints WHERE seq > 606')
    const cut2 = await s.cli('audit', 'verify')
    expect(cut2.code).toBe(1)
    expect(cut2.err).toMatch(/audit chain broken at seq 607: row missing.*checkpoints\.ndjson\) covers seq 611/)
  }, 60_000)

  it('a broker-style checkpoint timer signs the head when it moved, and stop() seals the tail', async () => {
    const a = openAuditLog(s.db, s.cfg, log)
    const checkpointsAt = (seq: number) => count(s.db, `SELECT count(*) AS n FROM audit_checkpoints WHERE seq = ${seq}`)
    a.startCheckpoints(20)
    await a.record(entry(1))
    const head = (await a.head())?.seq as number
    await waitFor(async () => (await checkpointsAt(head)) === 1)
    expect(await a.checkpointIfMoved()).toBeNull()
    await a.record(entry(2))
    await a.stop()
    expect(await checkpointsAt(head + 1)).toBe(1)
    await expect(a.record(entry(3))).rejects.toThrow(/stopped/)
  })
})

describe.each(['postgres', 'embedded'] as const)('forged checkpoints on %s', (kind) => {
  let s: Store
  beforeAll(async () => {
    s = await openStore(kind)
    await Promise.all(Array.from({ length: 5 }, (_, i) => s.audit.record(entry(i))))
    await s.audit.checkpoint()
  }, 60_000)
  afterAll(async () => {
    await s?.dispose()
  })

  /** Rewrites row `seq` with `details` and re-hashes every row after it, as a careful forger would. */
  async function rewriteFrom(seq: number, details: string): Promise<void> {
    const rows = await s.db.query<AuditRow & { prev: string }>(
      `SELECT seq, ${atSql('at')} AS at, actor_role AS "actorRole", actor_id AS "actorId", action, subject, purpose,
              details, encode(prev_hash, 'hex') AS prev FROM audit_log WHERE seq >= $1 ORDER BY seq`,
      [seq],
    )
    let prev: Buffer = Buffer.from(rows.rows[0]?.prev as string, 'hex')
    const updates: string[] = []
    for (const r of rows.rows) {
      const row = { ...r, seq: Number(r.seq), details: Number(r.seq) === seq ? details : r.details }
      const hash = chainHash(prev, row)
      updates.push(
        `UPDATE audit_log SET details = $d$${row.details}$d$, prev_hash = '\\x${prev.toString('hex')}',
           hash = '\\x${hash.toString('hex')}' WHERE seq = ${row.seq}`,
      )
      prev = hash
    }
    await s.tamper(...updates)
  }

  it('a row rewritten with every later hash recomputed is caught by the signed checkpoint', async () => {
    expect((await s.audit.verify()).ok).toBe(true)
    const original = (await s.db.query<{ details: string }>('SELECT details FROM audit_log WHERE seq = 2')).rows[0]
    await rewriteFrom(2, '{"i":42}')
    const r = await s.cli('audit', 'verify')
    expect(r.code).toBe(1)
    expect(r.err).toMatch(/audit chain broken at seq 5: hash differs from the checkpoint signed at .*rewritten/)
    await rewriteFrom(2, original?.details as string)
    expect((await s.audit.verify()).ok).toBe(true)
  })

  it('a checkpoint row with a forged signature is caught', async () => {
    expect((await s.audit.verify()).ok).toBe(true)
    await s.tamper(
      `UPDATE audit_checkpoints SET signature = set_byte(signature, 0, (get_byte(signature, 0) + 1) % 256)`,
    )
    const r = await s.cli('audit', 'verify')
    expect(r.code).toBe(1)
    expect(r.err).toMatch(/audit checkpoint for seq 5 \(audit_checkpoints\): bad signature/)
  })

  it('a checkpoint signed with a key outside the trusted set is caught, in the file too', async () => {
    await s.tamper('DELETE FROM audit_checkpoints')
    expect((await s.audit.verify()).ok).toBe(true)
    const head = await s.audit.head()
    const rogue = crypto.generateKeyPairSync('ed25519')
    const unsigned = {
      seq: 5,
      hash: head?.hash as string,
      at: '2030-01-01T00:00:00.000000Z',
      keyId: keyIdOf(rogue.publicKey),
    }
    const signature = crypto.sign(null, checkpointMessage(unsigned), rogue.privateKey).toString('hex')
    fs.appendFileSync(checkpointFilePath(s.cfg.dataDir), `${JSON.stringify({ ...unsigned, signature })}\n`)
    const v = await s.audit.verify()
    expect(v).toMatchObject({ ok: false, seq: 5 })
    expect(v.ok ? '' : v.message).toMatch(/checkpoints\.ndjson\): signed by an unknown key/)
  })
})

/** The admin RPC as a broker serves it (the real routes, registry and writer), owning the embedded store. */
async function serveRoutes(cfg: BrokerConfig, db: Db, audit: AuditLog) {
  const metrics = createMetrics()
  const writer = new GroupCommitWriter(db, cfg.ingest, metrics, log)
  const server = http.createServer(
    createHttpRoutes({
      config: cfg,
      metrics,
      registry: new Registry(db),
      tokens: new Tokens(cfg),
      db,
      writer,
      isReady: () => true,
      onDeviceRevoked: () => {},
      onDevicesRegistered: () => {},
      audit,
      log,
    }),
  )
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const port = (server.address() as AddressInfo).port
  return {
    port,
    async rpc(body: unknown, role: 'admin' | 'app' = 'admin') {
      const jwt = await new Tokens(cfg).sign({ sub: 'ops1', role, ttl: 60 })
      const res = await fetch(`http://127.0.0.1:${port}/admin/rpc`, {
        method: 'POST',
        headers: { authorization: `Bearer ${jwt}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      })
      return { status: res.status, body: (await res.json()) as Record<string, unknown> }
    },
    async close() {
      await writer.close(1000)
      server.closeAllConnections()
      await new Promise<void>((r) => server.close(() => r()))
    },
  }
}

describe.each(['postgres', 'embedded'] as const)('RPC calls and revocations leave audit rows on %s', (kind) => {
  let s: Store
  beforeAll(async () => {
    s = await openStore(kind)
  }, 60_000)
  afterAll(async () => {
    await s?.dispose()
  })

  it('every admin RPC call is recorded before it runs; a revocation also as device.revoke', async () => {
    const srv = await serveRoutes(s.cfg, s.db, s.audit)
    try {
      expect((await srv.rpc({ op: 'ensureUser', userId: 'carol' })).status).toBe(200)
      const reg = await srv.rpc({ op: 'registerDevice', deviceId: 'trk-9', userId: 'carol', fingerprint: 'AB:CD' })
      expect(reg.status).toBe(200)
      expect((await srv.rpc({ op: 'revokeDevice', deviceId: 'trk-9' })).body).toEqual({ revoked: true })
      expect((await srv.rpc({ op: 'ensureUser', userId: 'carol' }, 'app')).status).toBe(403)
      const v = await srv.rpc({ op: 'auditVerify' })
      expect(v.body).toMatchObject({ ok: true, rows: 5 })
    } finally {
      await srv.close()
    }
    const rows = await s.db.query<{ actor_role: string; actor_id: string; action: string; subject: string | null }>(
      'SELECT actor_role, actor_id, action, subject, details FROM audit_log ORDER BY seq',
    )
    expect(rows.rows).toEqual([
      expect.objectContaining({ actor_role: 'admin', actor_id: 'ops1', action: 'rpc.ensureUser', subject: 'carol' }),
      expect.objectContaining({ action: 'rpc.registerDevice', subject: 'carol', details: '{"deviceId":"trk-9"}' }),
      expect.objectContaining({ action: 'rpc.revokeDevice', subject: null, details: '{"deviceId":"trk-9"}' }),
      expect.objectContaining({ actor_role: 'admin', actor_id: 'ops1', action: 'device.revoke', subject: 'carol' }),
      expect.objectContaining({ action: 'rpc.auditVerify' }),
    ])
  })

  it('pki revoke offline records device.revoke as the CLI', async () => {
    await new Registry(s.db).registerDevice({ deviceId: 'trk-10', userId: 'carol', fingerprint: 'EF:01' })
    const r = await s.cli('pki', 'revoke', 'trk-10')
    expect(r.code, r.err).toBe(0)
    const row = await s.db.query<{ actor_role: string; actor_id: string | null; subject: string; details: string }>(
      `SELECT actor_role, actor_id, subject, details FROM audit_log WHERE action = 'device.revoke' ORDER BY seq DESC LIMIT 1`,
    )
    expect(row.rows[0]).toEqual({
      actor_role: 'cli',
      actor_id: null,
      subject: 'carol',
      details: '{"deviceId":"trk-10"}',
    })
    expect((await s.cli('audit', 'checkpoint')).out).toMatch(/checkpoint: seq 6, hash [0-9a-f]{64}/)
    expect((await s.cli('audit', 'verify')).code).toBe(0)
  }, 60_000)

  // Only the embedded store has an owner to go through; against a server the CLI always works offline.
  if (kind === 'embedded')
    it('audit verify and checkpoint go through the admin RPC while a broker owns the embedded store', async () => {
      const srv = await serveRoutes(s.cfg, s.db, s.audit)
      updateEmbeddedLock(s.cfg.dataDir, { httpPort: srv.port, host: '127.0.0.1' })
      try {
        process.env.PULSEGATE_DATA_DIR = s.cfg.dataDir
        const cp = await cli('audit', 'checkpoint')
        expect(cp.code, cp.err).toBe(0)
        const v = await cli('audit', 'verify')
        expect(v.code, v.err).toBe(0)
        expect(v.out).toMatch(/audit chain ok: 8 rows/)
      } finally {
        await srv.close()
      }
      const actions = (
        await s.db.query<{ action: string }>('SELECT action FROM audit_log WHERE seq > 6 ORDER BY seq')
      ).rows.map((r) => r.action)
      expect(actions).toEqual(['rpc.auditCheckpoint', 'rpc.auditVerify'])
    })
})

describe('audit CLI', () => {
  it('audit verify and audit checkpoint have --help', async () => {
    for (const cmd of [['audit'], ['audit', 'verify'], ['audit', 'checkpoint']]) {
      const writes: string[] = []
      const spy = vi.spyOn(process.stdout, 'write').mockImplementation((s: string | Uint8Array) => {
        writes.push(String(s))
        return true
      })
      const code = await main(['node', 'pulsegate', ...cmd, '--help'])
      spy.mockRestore()
      expect(code).toBe(0)
      expect(writes.join('')).toMatch(/Usage: pulsegate audit/)
    }
  })
})
