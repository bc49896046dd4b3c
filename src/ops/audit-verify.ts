// `audit verify`: walks the chain in keyset pages (constant memory at millions of rows), recomputes every hash, checks
// the prev links and seq continuity, every checkpoint's signature, and that the chain still holds each checkpoint's
// (seq, hash). A checkpoint past the chain's end means its tail was cut off.
import crypto, { type KeyObject } from 'node:crypto'
import fs from 'node:fs'
import readline from 'node:readline'
import { z } from 'zod'
import type { Queryable } from '../store/db.js'
import { type AuditCheckpoint, atSql, chainHash, checkpointMessage, GENESIS_HASH } from './audit-chain.js'

export type AuditVerdict =
  | {
      ok: true
      rows: number
      headSeq: number
      headHash: string | null
      /** checkpoints checked (database rows and file lines) */
      checkpoints: number
      newestCheckpoint: { seq: number; at: string } | null
      /** rows after the newest checkpoint: protected by the chain, not yet by a signature */
      unsealedRows: number
      ms: number
    }
  | {
      ok: false
      /** the first row (or checkpoint's seq) that does not verify */
      seq: number
      problem: string
      /** `audit chain broken at seq 123: hash mismatch …` */
      message: string
      rowsChecked: number
      checkpoints: number
      ms: number
    }

export interface VerifyOptions {
  /** key id → public key, read from files (never from the database) */
  trusted: ReadonlyMap<string, KeyObject>
  /** the checkpoint file outside the database; null or missing file: database checkpoints only */
  checkpointFile: string | null
  pageSize?: number
}

type Source = 'audit_checkpoints' | string
interface KnownCheckpoint {
  hash: string
  at: string
  source: Source
}

const fileLine = z.object({
  seq: z.number().int().positive(),
  hash: z.string().regex(/^[0-9a-f]{64}$/),
  at: z.string(),
  keyId: z.string().regex(/^[0-9a-f]{64}$/),
  signature: z.string().regex(/^[0-9a-f]+$/),
})

class Broken extends Error {
  constructor(
    readonly seq: number,
    readonly problem: string,
    readonly checkpoint = false,
  ) {
    super(problem)
  }
}

function checkSignature(cp: AuditCheckpoint, source: Source, trusted: ReadonlyMap<string, KeyObject>): void {
  const where = `audit checkpoint for seq ${cp.seq} (${source})`
  const key = trusted.get(cp.keyId)
  if (!key) throw new Broken(cp.seq, `${where}: signed by an unknown key ${cp.keyId.slice(0, 16)}…`, true)
  const { signature, ...signed } = cp
  if (!crypto.verify(null, checkpointMessage(signed), key, Buffer.from(signature, 'hex')))
    throw new Broken(cp.seq, `${where}: bad signature`, true)
}

async function* fileCheckpoints(file: string): AsyncGenerator<AuditCheckpoint> {
  const lines = readline.createInterface({
    input: fs.createReadStream(file, 'utf8'),
    crlfDelay: Number.POSITIVE_INFINITY,
  })
  let n = 0
  for await (const line of lines) {
    n++
    if (line.trim() === '') continue
    let parsed: z.infer<typeof fileLine>
    try {
      parsed = fileLine.parse(JSON.parse(line))
    } catch {
      throw new Broken(0, `audit checkpoint file ${file} line ${n}: not a checkpoint`, true)
    }
    yield parsed
  }
}

async function loadCheckpoints(db: Queryable, opts: VerifyOptions): Promise<Map<number, KnownCheckpoint[]>> {
  const known = new Map<number, KnownCheckpoint[]>()
  const add = (cp: AuditCheckpoint, source: Source) => {
    checkSignature(cp, source, opts.trusted)
    const list = known.get(cp.seq) ?? []
    list.push({ hash: cp.hash, at: cp.at, source })
    known.set(cp.seq, list)
  }
  // Checkpoints are one per interval (minutes), a tiny fraction of the rows: kept in memory while the rows stream.
  const rows = await db.query<{ seq: string | number; hash: string; at: string; key_id: string; signature: string }>(
    `SELECT seq, encode(hash, 'hex') AS hash, ${atSql('at')} AS at, key_id, encode(signature, 'hex') AS signature
       FROM audit_checkpoints ORDER BY seq`,
  )
  for (const r of rows.rows)
    add({ seq: Number(r.seq), hash: r.hash, at: r.at, keyId: r.key_id, signature: r.signature }, 'audit_checkpoints')
  if (opts.checkpointFile && fs.existsSync(opts.checkpointFile))
    for await (const cp of fileCheckpoints(opts.checkpointFile)) add(cp, opts.checkpointFile)
  return known
}

/** [seq, at, actor_role, actor_id, action, subject, purpose, details, prev_hash hex, hash hex] */
type PageRow = [number, string, string, string | null, string, string | null, string | null, string, string, string]

/**
 * Rows from..to (inclusive) as a single JSON array built by the server: one value to transfer and one native
 * JSON.parse instead of a driver decoding ten columns per row in JavaScript (text round-trips exactly). A seq range
 * rather than `seq > x LIMIT n`: the planner always walks the primary key for it, never a bitmap scan plus a sort.
 */
function page(db: Queryable, from: number, to: number): Promise<PageRow[]> {
  const p = db
    .query<{ page: string | null }>(
      `SELECT json_agg(json_build_array(seq, ${atSql('at')}, actor_role, actor_id, action, subject, purpose, details,
                                        encode(prev_hash, 'hex'), encode(hash, 'hex')) ORDER BY seq)::text AS page
         FROM audit_log WHERE seq BETWEEN $1 AND $2`,
      [from, to],
    )
    .then((r) => (r.rows[0]?.page ? (JSON.parse(r.rows[0].page) as PageRow[]) : []))
  // A prefetched page may be abandoned when the walk stops early; its failure must not go unhandled.
  p.catch(() => {})
  return p
}

export async function verifyAuditChain(db: Queryable, opts: VerifyOptions): Promise<AuditVerdict> {
  const started = performance.now()
  const pageSize = opts.pageSize ?? 10_000
  let rowsChecked = 0
  let checkpointCount = 0
  let expected = 1
  let prevHex = GENESIS_HASH.toString('hex')
  let prev = GENESIS_HASH
  try {
    const known = await loadCheckpoints(db, opts)
    for (const list of known.values()) checkpointCount += list.length
    // The next page is fetched while this one is hashed: the server works while we do.
    let from = 1
    let next = page(db, from, pageSize)
    for (;;) {
      const rows = await next
      const to = from + pageSize - 1
      from = to + 1
      next = page(db, from, from + pageSize - 1)
      for (const [seq, at, actorRole, actorId, action, subject, purpose, details, prevHash, storedHash] of rows) {
        if (seq !== expected) throw new Broken(expected, `row missing (the next row is seq ${seq})`)
        if (prevHash !== prevHex)
          throw new Broken(
            seq,
            seq === 1
              ? 'prev_hash of the first row is not the genesis value'
              : `prev_hash does not match the hash of seq ${seq - 1} (one of the two rows was altered)`,
          )
        const hash = chainHash(prev, { seq, at, actorRole, actorId, action, subject, purpose, details })
        const hex = hash.toString('hex')
        if (hex !== storedHash) throw new Broken(seq, 'hash mismatch (the row was altered)')
        for (const cp of known.get(seq) ?? [])
          if (cp.hash !== hex)
            throw new Broken(
              seq,
              `hash differs from the checkpoint signed at ${cp.at} (${cp.source}): the rows up to here were rewritten`,
            )
        prev = hash
        prevHex = hex
        expected++
        rowsChecked++
      }
      if (expected <= to) {
        // The page was not full: the chain ends here, unless rows follow a gap.
        const after = await db.query<{ seq: string | number | null }>(
          'SELECT min(seq) AS seq FROM audit_log WHERE seq > $1',
          [to],
        )
        const seq = after.rows[0]?.seq
        if (seq !== null && seq !== undefined) throw new Broken(expected, `row missing (the next row is seq ${seq})`)
        break
      }
    }
    const headSeq = expected - 1
    let newest: { seq: number; at: string; source: Source } | null = null
    for (const [seq, list] of known) if (!newest || seq > newest.seq) newest = { seq, ...(list[0] as KnownCheckpoint) }
    if (newest && newest.seq > headSeq)
      throw new Broken(
        headSeq + 1,
        `row missing: the chain ends at seq ${headSeq} but the checkpoint signed at ${newest.at} (${newest.source}) covers seq ${newest.seq}, so its tail was cut off`,
      )
    return {
      ok: true,
      rows: rowsChecked,
      headSeq,
      headHash: headSeq > 0 ? prevHex : null,
      checkpoints: checkpointCount,
      newestCheckpoint: newest ? { seq: newest.seq, at: newest.at } : null,
      unsealedRows: headSeq - (newest?.seq ?? 0),
      ms: Math.round(performance.now() - started),
    }
  } catch (err) {
    if (!(err instanceof Broken)) throw err
    return {
      ok: false,
      seq: err.seq,
      problem: err.problem,
      message: err.checkpoint ? err.problem : `audit chain broken at seq ${err.seq}: ${err.problem}`,
      rowsChecked,
      checkpoints: checkpointCount,
      ms: Math.round(performance.now() - started),
    }
  }
}
