// Audit verify time: how long `audit verify` takes to walk a chain of N audit rows (default 1,000,000) and how much
// memory it needs. The chain is filled through the broker's own append code (AuditLog.appendBatch: same canonical
// row, same SHA-256 chain, 10,000 rows a transaction) with a signed checkpoint every 100,000 rows; then verify() runs
// in a fresh process, so its peak RSS is verify's own, and finally the real `pulsegate audit verify` command is
// timed end to end (process start, migrations check, walk). A fresh PostgreSQL database or embedded data dir per run.
// Run: npm run build && node dist/bench/audit.js [--rows 1000000] [--store postgres|embedded] [--page 10000]
import { execFile } from 'node:child_process'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs, promisify } from 'node:util'
import { loadConfig } from '../broker.config.js'
import { createLogger } from '../src/log.js'
import { openAuditLog } from '../src/ops/audit.js'
import type { AuditEntry } from '../src/ops/audit-types.js'
import type { Db } from '../src/store/db.js'
import { openEmbedded } from '../src/store/embedded.js'
import { migrate } from '../src/store/migrate.js'
import { openPostgres } from '../src/store/postgres.js'
import { num, printHeaderAndExit, usage } from './lib/args.js'
import { PG_ADMIN_URL } from './lib/broker.js'
import { adminSql } from './lib/fresh-store.js'

const run = promisify(execFile)
const { values } = parseArgs({
  options: {
    rows: { type: 'string', default: '1000000' },
    store: { type: 'string', default: 'postgres' },
    page: { type: 'string', default: '10000' },
    help: { type: 'boolean', default: false },
    // internal: the verify-only child
    'verify-child': { type: 'boolean', default: false },
    'data-dir': { type: 'string' },
    'db-url': { type: 'string' },
  },
})
if (values.help) printHeaderAndExit(import.meta.url)
const store = values.store
if (store !== 'postgres' && store !== 'embedded') usage('--store must be postgres or embedded')
const ROWS = num('rows', values.rows, 1)
const PAGE = num('page', values.page, 100)
const log = createLogger('warn', 'bench-audit')

async function open(dataDir: string, dbUrl: string | undefined): Promise<Db> {
  return dbUrl ? openPostgres(dbUrl, 2, log) : openEmbedded(dataDir, log)
}

if (values['verify-child']) {
  const dataDir = values['data-dir'] as string
  const cfg = loadConfig({ dataDir, ...(values['db-url'] ? { databaseUrl: values['db-url'] } : {}) }, {})
  const db = await open(dataDir, cfg.databaseUrl)
  const started = performance.now()
  const verdict = await openAuditLog(db, cfg, log).verify({ pageSize: PAGE })
  const ms = performance.now() - started
  await db.close()
  console.log(JSON.stringify({ verdict, ms, maxRssKb: process.resourceUsage().maxRSS }))
  process.exit(0)
}

const ACTIONS = ['sync.request', 'sync.request', 'sync.request', 'subscribe.event', 'tap.readings', 'export']
function entry(i: number): AuditEntry {
  const action = ACTIONS[i % ACTIONS.length] as string
  const user = `u${(i * 7919) % 50_000}`
  return {
    actor: { role: action === 'tap.readings' ? 'admin' : 'app', id: action === 'tap.readings' ? 'ops1' : user },
    action,
    subject: user,
    purpose: action === 'export' ? 'export' : null,
    details:
      action === 'sync.request' ? { from: 1764000000000 + i, samples: i % 500 } : { topic: `users/${user}/live` },
  }
}

const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-bench-audit-'))
const dbName = store === 'postgres' ? `pulsegate_bench_${crypto.randomBytes(5).toString('hex')}` : null
const dbUrl = dbName ? PG_ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`) : undefined
if (dbName) await adminSql(`CREATE DATABASE ${dbName}`)
try {
  const cfg = loadConfig({ dataDir, ...(dbUrl ? { databaseUrl: dbUrl } : {}), logLevel: 'warn' }, {})
  const db = await open(dataDir, dbUrl)
  await migrate(db, log)
  const audit = openAuditLog(db, cfg, log)
  const fillStarted = performance.now()
  const BATCH = 10_000
  for (let done = 0; done < ROWS; ) {
    const n = Math.min(BATCH, ROWS - done)
    await audit.appendBatch(
      Array.from({ length: n }, (_, k) => entry(done + k)),
      new Date(1764000000000 + done),
    )
    done += n
    if (done % 100_000 === 0 || done === ROWS) await audit.checkpoint()
    if (done % 100_000 === 0) console.error(`filled ${done}/${ROWS}`)
  }
  const fillMs = performance.now() - fillStarted
  await audit.stop()
  if (db.kind === 'postgres') await db.query('VACUUM ANALYZE audit_log')
  const size = await db.query<{ size: string }>(`SELECT pg_size_pretty(pg_total_relation_size('audit_log')) AS size`)
  await db.close()

  const self = fileURLToPath(import.meta.url)
  const child = await run(
    process.execPath,
    [self, '--verify-child', '--data-dir', dataDir, '--page', String(PAGE), ...(dbUrl ? ['--db-url', dbUrl] : [])],
    { maxBuffer: 16 * 1024 * 1024 },
  )
  const v = JSON.parse(child.stdout) as { verdict: { ok: boolean; rows?: number }; ms: number; maxRssKb: number }
  if (!v.verdict.ok) throw new Error(`verify failed on a clean chain: ${JSON.stringify(v.verdict)}`)

  const cliPath = fileURLToPath(new URL('../src/cli/main.js', import.meta.url))
  const cliStarted = performance.now()
  const cliOut = await run(process.execPath, [cliPath, 'audit', 'verify'], {
    env: {
      ...process.env,
      PULSEGATE_DATA_DIR: dataDir,
      PULSEGATE_LOG_LEVEL: 'warn',
      ...(dbUrl ? { PULSEGATE_DATABASE_URL: dbUrl } : { PULSEGATE_DATABASE_URL: '' }),
    },
  })
  const cliMs = performance.now() - cliStarted

  const result = {
    bench: 'audit-verify',
    store,
    rows: ROWS,
    pageSize: PAGE,
    tableSize: size.rows[0]?.size,
    fill: { ms: Math.round(fillMs), rowsPerS: Math.round(ROWS / (fillMs / 1000)) },
    verify: {
      ms: Math.round(v.ms),
      rowsPerS: Math.round(ROWS / (v.ms / 1000)),
      peakRssMb: Math.round(v.maxRssKb / 1024),
    },
    cli: { command: 'pulsegate audit verify', wallMs: Math.round(cliMs), output: cliOut.stdout.trim() },
    host: { cpus: os.cpus().length, node: process.version },
  }
  console.log(
    `audit verify, ${store}, ${ROWS} rows (${result.tableSize}): verify() ${result.verify.ms} ms ` +
      `(${result.verify.rowsPerS} rows/s, peak RSS ${result.verify.peakRssMb} MB); ` +
      `\`pulsegate audit verify\` ${result.cli.wallMs} ms wall; fill ${result.fill.rowsPerS} rows/s`,
  )
  console.log(JSON.stringify(result))
} finally {
  if (dbName) await adminSql(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => {})
  fs.rmSync(dataDir, { recursive: true, force: true })
}
