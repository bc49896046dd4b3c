// A fresh store for one benchmark run: a new PostgreSQL database (CREATE DATABASE, dropped afterwards) or the embedded
// TimescaleDB in a temp dir, so no run measures the leftovers of another.
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import pg from 'pg'
import type { Logger } from '../../src/log.js'
import type { Db } from '../../src/store/db.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { openPostgres } from '../../src/store/postgres.js'
import { PG_ADMIN_URL, type StoreKind } from './broker.js'

/** One statement on the server's maintenance database (CREATE/DROP DATABASE cannot run inside one). */
export async function adminSql(sql: string): Promise<void> {
  const c = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 3000 })
  await c.connect()
  try {
    await c.query(sql)
  } finally {
    await c.end()
  }
}

export async function openFreshStore(
  store: StoreKind,
  opts: { connections: number; tmpPrefix: string; log: Logger },
): Promise<{ db: Db; cleanup(): Promise<void> }> {
  if (store === 'postgres') {
    const name = `pulsegate_bench_${crypto.randomBytes(5).toString('hex')}`
    await adminSql(`CREATE DATABASE ${name}`)
    const db = openPostgres(PG_ADMIN_URL.replace(/\/[^/]*$/, `/${name}`), opts.connections, opts.log)
    return {
      db,
      async cleanup() {
        await db.close()
        await adminSql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      },
    }
  }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), opts.tmpPrefix))
  const db = await openEmbedded(dir, opts.log)
  return {
    db,
    async cleanup() {
      await db.close()
      fs.rmSync(dir, { recursive: true, force: true })
    },
  }
}
