// The `pulsegate stats …` operations, run where the data lives: against the database by the CLI, or by a running broker
// that owns the embedded store (its /admin/rpc, admin JWT). Both paths run runDpRpc.
import { z } from 'zod'
import type { Metrics } from '../../metrics.js'
import type { Db } from '../../store/db.js'
import { ID_RE } from '../../topics/grammar.js'
import { parseEpsilon } from './epsilon.js'
import { ledgerReport } from './ledger.js'
import type { ConsentReader } from './source.js'
import { BudgetExceededError, type DpSettings, operatorRelease } from './stats.js'

const id = z.string().regex(ID_RE)

export const dpRpcSchemas = [
  z.object({
    op: z.literal('dpRelease'),
    eventId: id,
    /** decimal text, at most 6 decimals (kept exact) */
    epsilon: z
      .string()
      .regex(/^\d+(\.\d{1,6})?$/)
      .optional(),
    dryRun: z.boolean().optional(),
  }),
  z.object({ op: z.literal('dpLedger'), eventId: id }),
] as const

export type DpRpcRequest = z.infer<(typeof dpRpcSchemas)[number]>

export interface DpRpcContext {
  db: Db
  dp: DpSettings
  metrics?: Metrics
  consent?: ConsentReader
}

export async function runDpRpc(ctx: DpRpcContext, req: DpRpcRequest): Promise<unknown> {
  switch (req.op) {
    case 'dpRelease': {
      const out = await operatorRelease(ctx.db, ctx.dp, req.eventId, {
        ...(req.epsilon !== undefined ? { epsilon: req.epsilon } : {}),
        ...(req.dryRun ? { dryRun: true } : {}),
        ...(ctx.consent ? { consent: ctx.consent } : {}),
      }).catch((err: Error) => {
        if (err instanceof BudgetExceededError) ctx.metrics?.dpBudgetRefusals.inc({ series: 'operator' })
        throw err
      })
      if (!('dryRun' in out)) ctx.metrics?.dpReleases.inc({ series: 'operator' })
      return out
    }
    case 'dpLedger':
      return ledgerReport(ctx.db, req.eventId, parseEpsilon(ctx.dp.budgetPerDay, 'dp.budgetPerDay'))
  }
}
