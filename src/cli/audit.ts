// `pulsegate audit verify|checkpoint`: offline against the database, or through a running broker's admin RPC when it
// owns the embedded store (withOps decides). A broken chain exits 1 with the first row that does not verify.
import type { Command } from 'commander'
import { loadConfig } from '../../broker.config.js'
import type { AuditCheckpoint, AuditVerdict } from '../ops/audit.js'
import { withOps } from './ops.js'

export class AuditBrokenError extends Error {}

export function describeVerdict(v: Extract<AuditVerdict, { ok: true }>): string {
  const cp = v.newestCheckpoint
  return (
    `audit chain ok: ${v.rows} rows${v.rows ? ` (seq 1…${v.headSeq})` : ''}, ${v.checkpoints} checkpoint signatures valid` +
    (cp
      ? `; newest checkpoint seq ${cp.seq} at ${cp.at}, ${v.unsealedRows} rows after it`
      : '; no checkpoint yet (run `pulsegate audit checkpoint`)') +
    ` (${v.ms} ms)`
  )
}

/** Added to the program itself so the subcommands inherit its settings (exitOverride, help after errors). */
export function addAuditCommand(program: Command): void {
  const audit = program
    .command('audit')
    .description('the audit log: an append-only hash chain with signed checkpoints (docs/privacy.md)')
  audit
    .command('verify')
    .description(
      'recompute the whole chain and check every checkpoint; exit 0 when intact, 1 naming the first row that is not',
    )
    .action(async () => {
      const v = (await withOps(loadConfig(), (op) => op({ op: 'auditVerify' }))) as AuditVerdict
      if (!v.ok) throw new AuditBrokenError(v.message)
      console.log(describeVerdict(v))
    })
  audit
    .command('checkpoint')
    .description('sign the head of the chain now (written to the database and <data dir>/audit/checkpoints.ndjson)')
    .action(async () => {
      const r = (await withOps(loadConfig(), (op) => op({ op: 'auditCheckpoint' }))) as {
        checkpoint: AuditCheckpoint | null
      }
      const cp = r.checkpoint
      console.log(
        cp
          ? `checkpoint: seq ${cp.seq}, hash ${cp.hash}, signed at ${cp.at} by key ${cp.keyId.slice(0, 16)}…`
          : 'the audit log is empty: nothing to sign',
      )
    })
}
