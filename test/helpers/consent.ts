// A real ConsentService on a test database whose audit entries are kept in memory, for suites that build the output
// engine or its parts without a broker.
import type { AuditEntry, AuditSink } from '../../src/ops/audit-types.js'
import { ConsentService } from '../../src/ops/consent.js'
import type { Db } from '../../src/store/db.js'

export function testConsent(db: Db): { consent: ConsentService; audited: AuditEntry[] } {
  const audited: AuditEntry[] = []
  const sink: AuditSink = {
    async record(e) {
      audited.push(e)
    },
  }
  return { consent: new ConsentService(db, sink), audited }
}
