// What every privacy-relevant step hands to the audit log (src/ops/audit.ts keeps the hash chain). Kept apart so
// callers (sync, export, erasure, consent, hooks) depend on this small contract, not on the chain's implementation.
import type { Role } from '../identity/principal.js'

/** Who did it. `id` is a pseudonymous user id, a device id, or null (the CLI, the broker itself): never a name. */
export interface AuditActor {
  role: Role | 'cli' | 'system'
  id: string | null
}

/** Action names are dotted, stable, lower case: `sync.request`, `export`, `import`, `erasure`, `consent.change`,
 *  `device.revoke`, `subscribe.event`, `tap.readings`, `rpc.<op>`. */
export interface AuditEntry {
  actor: AuditActor
  action: string
  /** the pseudonym of the person whose data it is about, if any */
  subject: string | null
  /** consent purpose or processing purpose (`export`, `erasure`, `medical_alerts`, …), if any */
  purpose: string | null
  /** small JSON facts (counts, topic, format); pseudonyms only */
  details?: Record<string, unknown>
}

export interface AuditSink {
  /** resolves once the row is durably part of the chain */
  record(entry: AuditEntry): Promise<void>
}
