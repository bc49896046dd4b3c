// Versioned, idempotent migrations from migrations/*.sql. Files named *.tsdb.sql need TimescaleDB and are skipped
// (with one log line) on plain PostgreSQL; they apply later if the extension appears.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Logger } from '../log.js'
import type { Db } from './db.js'

export function migrationsDir(): string {
  // src/store → project root, both from src (vitest) and from dist/src (built)
  let dir = path.dirname(fileURLToPath(import.meta.url))
  for (let i = 0; i < 5; i++) {
    const candidate = path.join(dir, 'migrations')
    if (fs.existsSync(candidate) && fs.statSync(candidate).isDirectory()) return candidate
    dir = path.dirname(dir)
  }
  throw new Error('migrations/ directory not found')
}

export interface MigrateResult {
  timescale: boolean
  applied: string[]
  skipped: string[]
}

/**
 * Splits a migration file into statements at semicolons outside comments, quoted strings, quoted identifiers and
 * dollar-quoted bodies (`$$ … $$`, `$tag$ … $tag$`), so functions, triggers and DO blocks keep their inner `;`.
 */
export function statements(sql: string): string[] {
  const out: string[] = []
  const push = (s: string) => {
    const stmt = s.replace(/^\s*--.*$/gm, '').trim()
    if (stmt.length > 0) out.push(stmt)
  }
  let start = 0
  let i = 0
  while (i < sql.length) {
    const c = sql[i]
    if (c === '-' && sql[i + 1] === '-') {
      const nl = sql.indexOf('\n', i)
      i = nl < 0 ? sql.length : nl
    } else if (c === "'" || c === '"') {
      // A doubled quote inside is an escaped quote: the scan just closes and reopens.
      const end = sql.indexOf(c, i + 1)
      i = end < 0 ? sql.length : end + 1
    } else if (c === '$') {
      const tag = /^\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$/.exec(sql.slice(i, i + 64))?.[0]
      if (tag) {
        const end = sql.indexOf(tag, i + tag.length)
        i = end < 0 ? sql.length : end + tag.length
      } else i++
    } else if (c === ';') {
      push(sql.slice(start, i))
      i++
      start = i
    } else i++
  }
  push(sql.slice(start))
  return out
}

async function enableTimescale(db: Db): Promise<boolean> {
  const available = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_available_extensions WHERE name = 'timescaledb'`,
  )
  if ((available.rows[0]?.n ?? 0) === 0) return false
  try {
    await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
    return true
  } catch {
    // Listed but not preloaded (shared_preload_libraries): treat as plain PostgreSQL.
    return false
  }
}

export async function migrate(db: Db, log: Logger): Promise<MigrateResult> {
  // Two brokers starting together against one server must not race each other through the same files.
  const lockKey = 0x70756c73 // 'puls'
  if (db.kind === 'postgres') await db.query('SELECT pg_advisory_lock($1)', [lockKey])
  try {
    await db.exec(
      `CREATE TABLE IF NOT EXISTS schema_migrations (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
    )
    const timescale = await enableTimescale(db)
    const done = new Set(
      (await db.query<{ version: string }>('SELECT version FROM schema_migrations')).rows.map((r) => r.version),
    )
    const files = fs
      .readdirSync(migrationsDir())
      .filter((f) => f.endsWith('.sql'))
      .sort()
    const applied: string[] = []
    const skipped: string[] = []
    for (const file of files) {
      if (done.has(file)) continue
      const needsTsdb = file.endsWith('.tsdb.sql')
      if (needsTsdb && !timescale) {
        skipped.push(file)
        continue
      }
      const sql = fs.readFileSync(path.join(migrationsDir(), file), 'utf8')
      if (needsTsdb) {
        // Continuous aggregates cannot be created inside a transaction; every statement here is idempotent instead.
        for (const stmt of statements(sql)) await db.exec(stmt)
        await db.query('INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING', [file])
      } else {
        await db.transaction(async (q) => {
          for (const stmt of statements(sql)) await q.query(stmt)
          await q.query('INSERT INTO schema_migrations (version) VALUES ($1) ON CONFLICT DO NOTHING', [file])
        })
      }
      applied.push(file)
    }
    if (skipped.length > 0) {
      log.warn(
        { skipped },
        'TimescaleDB is not available on this PostgreSQL: running without hypertables, compression, retention and continuous aggregates',
      )
    }
    if (applied.length > 0) log.info({ applied, timescale }, 'migrations applied')
    return { timescale, applied, skipped }
  } finally {
    if (db.kind === 'postgres') await db.query('SELECT pg_advisory_unlock($1)', [lockKey]).catch(() => {})
  }
}
