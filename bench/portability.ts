// bench/portability.ts — export and import throughput of one person's history, and the memory they need.
//
// What it measures: a fresh store (a new PostgreSQL database, dropped afterwards, or the embedded TimescaleDB in a
// temp dir) opened in this process, one user with two devices, `--rows` rows bulk-inserted with generate_series
// (per device: 40 % hr, 15 % steps, 10 % spo2, 5 % each cadence/skin_temp/resp, 20 % GPS positions, one a second,
// values inside the plausibility bounds). Then, each phase timed on its own:
//   - export NDJSON (src/ops/export.ts) to a file in the temp dir: rows/s, MB/s;
//   - export the bundle (NDJSON + CSV + GPX + side files staged on disk, then the tar) to a file: rows/s;
//   - erase the user's rows, import the NDJSON file (src/ops/import.ts: parse, validateBatch, ON CONFLICT inserts):
//     rows/s; the imported rows are checked against the database (count equal to `--rows`, no refusals).
// For every phase: this process's peak RSS (process.memoryUsage.rss() sampled every 20 ms) and the RSS before it,
// and its CPU time (rows per CPU-second: what other load on a shared machine does not distort).
// With the embedded store the database runs inside this process (PGlite/WASM), so its memory is in the RSS too;
// with PostgreSQL it is not. Constant memory shows as a peak that does not grow with `--rows`: run it at two sizes,
// or under a heap cap (uncapped, V8 lets its heap grow well past what is in use before it collects).
//
// How to run (from the repository root):
//   npm run build
//   node dist/bench/portability.js --store postgres --rows 50000
//   node dist/bench/portability.js --store postgres --rows 500000
//   node dist/bench/portability.js --store embedded --rows 10000000      # the full size (~15 GB of temp disk)
//   node --max-old-space-size=64 dist/bench/portability.js --store postgres   # the same under a heap cap: proof that
//                                                                            # memory does not grow with the rows
// Options: --page-rows (export page, default 10000), --batch-rows (import statement, default 50000).
// Prints a human summary, then one line of JSON with every figure.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import pg from 'pg'
import { createLogger } from '../src/log.js'
import { exportUser } from '../src/ops/export.js'
import { importUser } from '../src/ops/import.js'
import type { Db } from '../src/store/db.js'
import { openEmbedded } from '../src/store/embedded.js'
import { migrate } from '../src/store/migrate.js'
import { openPostgres } from '../src/store/postgres.js'
import { Registry } from '../src/store/registry.js'

const { values } = parseArgs({
  options: {
    store: { type: 'string', default: 'postgres' },
    rows: { type: 'string', default: '10000000' },
    'page-rows': { type: 'string', default: '10000' },
    'batch-rows': { type: 'string', default: '50000' },
    help: { type: 'boolean', default: false },
  },
})
if (values.help) {
  const header = fs.readFileSync(new URL(import.meta.url), 'utf8').split('\n')
  console.log(header.filter((l) => l.startsWith('//')).join('\n'))
  process.exit(0)
}
function count(name: string, v: string | undefined, min: number): number {
  const n = Number(v)
  if (!Number.isInteger(n) || n < min) {
    console.error(`--${name} must be a whole number >= ${min} (got ${v})`)
    process.exit(2)
  }
  return n
}
const STORE = values.store
if (STORE !== 'postgres' && STORE !== 'embedded') {
  console.error('--store must be postgres or embedded')
  process.exit(2)
}
const ROWS = count('rows', values.rows, 100)
const PAGE_ROWS = count('page-rows', values['page-rows'], 1)
const BATCH_ROWS = count('batch-rows', values['batch-rows'], 1)
const PG_ADMIN_URL = process.env.PULSEGATE_BENCH_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
const USER = 'bench-user'
const mb = (b: number) => Math.round((b / 1048576) * 10) / 10

async function adminQuery(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL })
  await c.connect()
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}

interface Phase<T> {
  result: T
  ms: number
  /** this process's CPU time (user + system): a figure the other load on a shared machine does not inflate */
  cpuMs: number
  rssBefore: number
  rssPeak: number
  /** peak of the JS heap in use plus Buffers' memory outside it (what the code holds, without allocator slack) */
  heapPeak: number
}

/** Runs fn while sampling this process's RSS; returns its result, wall and CPU time and peak RSS. */
async function phase<T>(fn: () => Promise<T>): Promise<Phase<T>> {
  const rssBefore = process.memoryUsage.rss()
  const cpu0 = process.cpuUsage()
  let rssPeak = rssBefore
  let heapPeak = 0
  const sample = () => {
    const m = process.memoryUsage()
    rssPeak = Math.max(rssPeak, m.rss)
    heapPeak = Math.max(heapPeak, m.heapUsed + m.external)
  }
  const timer = setInterval(sample, 20)
  const t0 = performance.now()
  try {
    const result = await fn()
    sample()
    const cpu = process.cpuUsage(cpu0)
    return { result, ms: performance.now() - t0, cpuMs: (cpu.user + cpu.system) / 1000, rssBefore, rssPeak, heapPeak }
  } finally {
    clearInterval(timer)
  }
}

/** (metric code, share of a device's rows, value expression); the rest of the rows are positions. */
const SERIES: [number, number, string][] = [
  [1, 0.4, '60 + random() * 100'],
  [3, 0.15, 'floor(random() * 8)'],
  [2, 0.1, '90 + random() * 10'],
  [4, 0.05, 'random() * 180'],
  [5, 0.05, '30 + random() * 5'],
  [6, 0.05, '10 + random() * 10'],
]

async function fill(db: Db, deviceKeys: number[]): Promise<void> {
  const perDevice = Math.floor(ROWS / deviceKeys.length)
  const chunk = 500_000 // rows per statement: bounded work per statement on either store
  const start = Math.floor(Date.now() / 1000) * 1000 - perDevice * 1000
  for (const [d, key] of deviceKeys.entries()) {
    const n = d === deviceKeys.length - 1 ? ROWS - perDevice * (deviceKeys.length - 1) : perDevice
    let used = 0
    for (const [metric, share, value] of SERIES) {
      const rows = Math.floor(n * share)
      used += rows
      for (let i = 0; i < rows; i += chunk) {
        await db.query(
          `INSERT INTO samples (time, device_key, metric, value)
           SELECT to_timestamp(($1::float8 + i * 1000) / 1000), $2, $3, ${value} FROM generate_series($4::int, $5::int) i`,
          [start, key, metric, i, Math.min(rows, i + chunk) - 1],
        )
      }
    }
    const positions = n - used
    for (let i = 0; i < positions; i += chunk) {
      await db.query(
        `INSERT INTO positions (time, device_key, lat, lon, alt, acc)
         SELECT to_timestamp(($1::float8 + i * 1000) / 1000), $2, 52.5 + i * 0.00001, 13.4, 30 + random() * 5, 3 + random() * 10
         FROM generate_series($3::int, $4::int) i`,
        [start, key, i, Math.min(positions, i + chunk) - 1],
      )
    }
  }
}

async function main(): Promise<void> {
  const log = createLogger('warn')
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-bench-portability-'))
  let dbName: string | null = null
  let db: Db
  if (STORE === 'postgres') {
    dbName = `pulsegate_bench_${crypto.randomBytes(5).toString('hex')}`
    await adminQuery(`CREATE DATABASE ${dbName}`)
    db = openPostgres(PG_ADMIN_URL.replace(/\/[^/]*$/, `/${dbName}`), 2, log)
  } else {
    db = await openEmbedded(path.join(tmp, 'data'), log)
  }
  try {
    await migrate(db, log)
    const keys = await new Registry(db).registerDevices([
      { deviceId: 'bench-trk', userId: USER, fingerprint: 'BENCH:01' },
      { deviceId: 'bench-phone', userId: USER, fingerprint: 'BENCH:02' },
    ])
    const deviceKeys = [...keys.values()]
    const filled = await phase(() => fill(db, deviceKeys))
    await db.query('ANALYZE samples')
    await db.query('ANALYZE positions')

    const ndFile = path.join(tmp, 'export.ndjson')
    const nd = await phase(async () => {
      const out = fs.createWriteStream(ndFile)
      const r = await exportUser(db, out, { userId: USER, format: 'ndjson', pageRows: PAGE_ROWS })
      await new Promise<void>((resolve) => out.end(() => resolve()))
      return r
    })
    if (nd.result.total !== ROWS) throw new Error(`NDJSON export wrote ${nd.result.total} rows, expected ${ROWS}`)
    const bundleFile = path.join(tmp, 'export.tar')
    const bundle = await phase(async () => {
      const out = fs.createWriteStream(bundleFile)
      const r = await exportUser(db, out, { userId: USER, format: 'bundle', pageRows: PAGE_ROWS, tmpDir: tmp })
      await new Promise<void>((resolve) => out.end(() => resolve()))
      return r
    })
    if (bundle.result.total !== ROWS) throw new Error(`bundle export wrote ${bundle.result.total} rows`)

    await db.query('DELETE FROM samples WHERE device_key = ANY($1::int4[])', [deviceKeys])
    await db.query('DELETE FROM positions WHERE device_key = ANY($1::int4[])', [deviceKeys])
    const imp = await phase(async () => {
      const input = fs.createReadStream(ndFile)
      try {
        return await importUser(db, input, { userId: USER, deviceId: 'bench-trk', batchRows: BATCH_ROWS })
      } finally {
        input.destroy()
      }
    })
    const stored = await db.query<{ n: number }>(
      `SELECT ((SELECT count(*) FROM samples WHERE device_key = ANY($1::int4[])) +
               (SELECT count(*) FROM positions WHERE device_key = ANY($1::int4[])))::float8 AS n`,
      [deviceKeys],
    )
    const storedRows = Number(stored.rows[0]?.n)
    if (imp.result.imported !== ROWS || storedRows !== ROWS || Object.keys(imp.result.refused).length > 0) {
      throw new Error(`import: ${JSON.stringify(imp.result)}, ${storedRows} rows stored, expected ${ROWS}`)
    }

    const rate = (ms: number) => Math.round(ROWS / (ms / 1000))
    const figures = <T>(p: Phase<T>) => ({
      rowsPerS: rate(p.ms),
      rowsPerCpuS: rate(p.cpuMs),
      rssBeforeMb: mb(p.rssBefore),
      rssPeakMb: mb(p.rssPeak),
      heapPeakMb: mb(p.heapPeak),
    })
    const res = {
      store: STORE,
      rows: ROWS,
      pageRows: PAGE_ROWS,
      batchRows: BATCH_ROWS,
      fillS: Math.round(filled.ms / 100) / 10,
      loadavg: os.loadavg()[0] ?? 0,
      ndjson: {
        ...figures(nd),
        mbPerS: Math.round((nd.result.bytes / 1048576 / (nd.ms / 1000)) * 10) / 10,
        bytes: nd.result.bytes,
      },
      bundle: { ...figures(bundle), bytes: bundle.result.bytes },
      import: { ...figures(imp), imported: imp.result.imported },
    }
    const line = (name: string, f: ReturnType<typeof figures>) =>
      `  ${name}: ${f.rowsPerS} rows/s (${f.rowsPerCpuS} rows per CPU-second), peak RSS ${f.rssPeakMb} MB (before: ${f.rssBeforeMb} MB), peak heap + buffers ${f.heapPeakMb} MB`
    console.log(
      [
        `${STORE}, ${ROWS} rows (filled in ${res.fillS} s; load average ${res.loadavg.toFixed(1)}):`,
        line('export NDJSON', res.ndjson),
        line('export bundle', res.bundle),
        line('import NDJSON', res.import),
      ].join('\n'),
    )
    console.log(JSON.stringify(res))
  } finally {
    await db.close()
    if (dbName) await adminQuery(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => {})
    fs.rmSync(tmp, { recursive: true, force: true })
  }
}

main().catch((err: Error) => {
  console.error(err)
  process.exit(1)
})
