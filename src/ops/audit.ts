// The audit log: an append-only hash chain in the database (migrations/0006_audit.sql) with signed checkpoints of its
// head, kept both in the database and in a file outside it (the CloudTrail digest model), so a superuser who rewrites
// rows, or cuts off the tail and its checkpoint rows, is still caught by `pulsegate audit verify`.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import type { Db, Queryable } from '../store/db.js'
import {
  type AuditCheckpoint,
  type AuditRow,
  chainHash,
  checkpointMessage,
  GENESIS_HASH,
  isoMicros,
  type PreparedRow,
  prepareEntry,
} from './audit-chain.js'
import { type AuditSigner, loadSigner, trustedKeys } from './audit-keys.js'
import type { AuditEntry, AuditSink } from './audit-types.js'
import { type AuditVerdict, verifyAuditChain } from './audit-verify.js'

export type { AuditCheckpoint } from './audit-chain.js'
export type { AuditVerdict } from './audit-verify.js'

/** pg_advisory_xact_lock key serialising appenders across processes ('audt') */
export const AUDIT_LOCK_KEY = 0x61756474
/** entries per append transaction from the queue */
const MAX_BATCH = 2000

export interface AuditLogOptions {
  log: Logger
  /** the checkpoint signer, loaded (or generated) on the first checkpoint; absent: this log cannot checkpoint */
  signer?: () => AuditSigner
  /** public keys verify trusts, read when verify runs */
  trusted?: () => ReadonlyMap<string, crypto.KeyObject>
  /** checkpoints are appended here too (outside the database); null: database only */
  checkpointFile?: string | null
}

interface Pending {
  row: PreparedRow
  resolve(): void
  reject(err: Error): void
}

export function checkpointFilePath(dataDir: string): string {
  return path.join(dataDir, 'audit', 'checkpoints.ndjson')
}

export class AuditLog implements AuditSink {
  private queue: Pending[] = []
  /** the running drain, if any: record() starts one, stop() waits for it */
  private draining: Promise<void> | null = null
  private timer: NodeJS.Timeout | null = null
  private checkpointing: Promise<unknown> | null = null
  private stopping: Promise<void> | null = null
  private signerCache: AuditSigner | null = null

  constructor(
    private readonly db: Db,
    private readonly opts: AuditLogOptions,
  ) {}

  /** Queued with whatever else arrives meanwhile, appended in one transaction; resolves once committed. */
  record(entry: AuditEntry): Promise<void> {
    if (this.stopping) return Promise.reject(new Error('audit log is stopped'))
    let row: PreparedRow
    try {
      row = prepareEntry(entry, new Date())
    } catch (err) {
      return Promise.reject(err)
    }
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ row, resolve, reject })
      // One turn of the event loop lets entries recorded together share the first transaction.
      this.draining ??= new Promise<void>((r) => setImmediate(r)).then(() => this.drain())
    })
  }

  private async drain(): Promise<void> {
    while (this.queue.length > 0) {
      const batch = this.queue.splice(0, MAX_BATCH)
      try {
        await this.appendRows(batch.map((p) => p.row))
        for (const p of batch) p.resolve()
      } catch (err) {
        this.opts.log.error({ err: (err as Error).message, entries: batch.length }, 'audit append failed')
        for (const p of batch) p.reject(err as Error)
      }
    }
    // Cleared in the same synchronous step as the empty check: a record() after this starts a new drain.
    this.draining = null
  }

  /** Appends entries in one transaction, in order (bulk loads and the bench; record() is the normal path). */
  async appendBatch(entries: readonly AuditEntry[], at: Date = new Date()): Promise<void> {
    await this.appendRows(entries.map((e) => prepareEntry(e, at)))
  }

  private async appendRows(rows: readonly PreparedRow[]): Promise<void> {
    if (rows.length === 0) return
    await this.db.transaction(async (q) => {
      // Held until COMMIT: the head read below is the real head, whichever process appended last.
      await q.query('SELECT pg_advisory_xact_lock($1)', [AUDIT_LOCK_KEY])
      const head = await headOf(q)
      let seq = head?.seq ?? 0
      let prev = head ? Buffer.from(head.hash, 'hex') : GENESIS_HASH
      const cols = {
        seq: [] as number[],
        at: [] as string[],
        role: [] as string[],
        actor: [] as (string | null)[],
        action: [] as string[],
        subject: [] as (string | null)[],
        purpose: [] as (string | null)[],
        details: [] as string[],
        prev: [] as string[],
        hash: [] as string[],
      }
      for (const r of rows) {
        seq++
        const full: AuditRow = { ...r, seq }
        const hash = chainHash(prev, full)
        cols.seq.push(seq)
        cols.at.push(r.at)
        cols.role.push(r.actorRole)
        cols.actor.push(r.actorId)
        cols.action.push(r.action)
        cols.subject.push(r.subject)
        cols.purpose.push(r.purpose)
        cols.details.push(r.details)
        cols.prev.push(prev.toString('hex'))
        cols.hash.push(hash.toString('hex'))
        prev = hash
      }
      await q.query(
        `INSERT INTO audit_log (seq, at, actor_role, actor_id, action, subject, purpose, details, prev_hash, hash)
         SELECT s, a, r, ai, ac, su, pu, de, decode(ph, 'hex'), decode(h, 'hex')
           FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                       $8::text[], $9::text[], $10::text[]) AS u(s, a, r, ai, ac, su, pu, de, ph, h)`,
        [
          cols.seq,
          cols.at,
          cols.role,
          cols.actor,
          cols.action,
          cols.subject,
          cols.purpose,
          cols.details,
          cols.prev,
          cols.hash,
        ],
      )
    })
  }

  /** The newest row's seq and hash (hex), or null for an empty chain. */
  head(): Promise<{ seq: number; hash: string } | null> {
    return headOf(this.db)
  }

  private signer(): AuditSigner {
    if (!this.opts.signer) throw new Error('this audit log has no checkpoint key')
    this.signerCache ??= this.opts.signer()
    return this.signerCache
  }

  /**
   * Signs (seq, hash, at) of the current head and writes it to audit_checkpoints and to the checkpoint file (fsync'd).
   * null when the chain is empty.
   */
  async checkpoint(): Promise<AuditCheckpoint | null> {
    const signer = this.signer()
    const head = await this.head()
    if (!head) return null
    const unsigned = { seq: head.seq, hash: head.hash, at: isoMicros(new Date()), keyId: signer.keyId }
    const cp: AuditCheckpoint = {
      ...unsigned,
      signature: crypto.sign(null, checkpointMessage(unsigned), signer.privateKey).toString('hex'),
    }
    await this.db.query(
      `INSERT INTO audit_checkpoints (seq, hash, at, key_id, signature)
       VALUES ($1, decode($2, 'hex'), $3, $4, decode($5, 'hex')) ON CONFLICT DO NOTHING`,
      [cp.seq, cp.hash, cp.at, cp.keyId, cp.signature],
    )
    if (this.opts.checkpointFile) appendLine(this.opts.checkpointFile, JSON.stringify(cp))
    return cp
  }

  /** A checkpoint when the head moved past the newest one this key signed; null otherwise. */
  async checkpointIfMoved(): Promise<AuditCheckpoint | null> {
    const signer = this.signer()
    const [head, last] = await Promise.all([
      this.head(),
      this.db.query<{ seq: string | number | null }>(
        'SELECT max(seq) AS seq FROM audit_checkpoints WHERE key_id = $1',
        [signer.keyId],
      ),
    ])
    const lastSeq = Number(last.rows[0]?.seq ?? 0)
    if (!head || head.seq <= lastSeq) return null
    return this.checkpoint()
  }

  verify(opts: { pageSize?: number } = {}): Promise<AuditVerdict> {
    return verifyAuditChain(this.db, {
      trusted: this.opts.trusted?.() ?? new Map(),
      checkpointFile: this.opts.checkpointFile ?? null,
      ...opts,
    })
  }

  /** While a broker runs: a checkpoint every intervalMs when the head moved (0: none). A bad key fails here, at start. */
  startCheckpoints(intervalMs: number): void {
    if (intervalMs <= 0 || this.timer) return
    this.signer()
    this.timer = setInterval(() => {
      if (this.checkpointing) return
      this.checkpointing = this.checkpointIfMoved()
        .catch((err: Error) => this.opts.log.warn({ err: err.message }, 'audit checkpoint failed'))
        .finally(() => {
          this.checkpointing = null
        })
    }, intervalMs)
    this.timer.unref()
  }

  /** Refuses new entries, waits for queued ones, and seals the tail with a checkpoint if a timer was running. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      const timed = this.timer !== null
      if (this.timer) clearInterval(this.timer)
      this.timer = null
      await this.checkpointing
      await this.draining
      // Seals the tail at a clean shutdown; a failure must not keep the broker from closing its database.
      if (timed)
        await this.checkpointIfMoved().catch((err: Error) =>
          this.opts.log.warn({ err: err.message }, 'audit checkpoint at shutdown failed'),
        )
    })()
    return this.stopping
  }
}

async function headOf(q: Queryable): Promise<{ seq: number; hash: string } | null> {
  const res = await q.query<{ seq: string | number; hash: string }>(
    `SELECT seq, encode(hash, 'hex') AS hash FROM audit_log ORDER BY seq DESC LIMIT 1`,
  )
  const r = res.rows[0]
  return r ? { seq: Number(r.seq), hash: r.hash } : null
}

function appendLine(file: string, line: string): void {
  fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 })
  const fd = fs.openSync(file, 'a', 0o600)
  try {
    fs.writeSync(fd, `${line}\n`)
    fs.fsyncSync(fd)
  } finally {
    fs.closeSync(fd)
  }
}

/**
 * The audit log a process keeps for the configured store: checkpoint key from privacy.auditKeyFile or
 * <dataDir>/keys/audit-ed25519.pem (generated on the first checkpoint), checkpoint file <dataDir>/audit/.
 * A broker calls startCheckpoints(config.privacy.auditCheckpointMs) once listening and stop() before closing the db.
 */
export function openAuditLog(db: Db, config: Pick<BrokerConfig, 'dataDir' | 'privacy'>, log: Logger): AuditLog {
  return new AuditLog(db, {
    log,
    signer: () => loadSigner(config),
    trusted: () => trustedKeys(config),
    checkpointFile: checkpointFilePath(config.dataDir),
  })
}
