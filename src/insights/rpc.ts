// `pulsegate insights run`, where the data lives: in a running broker (its /admin/rpc: recommendations are published
// live to connected apps), or offline against the database (stored only; apps get them by delta sync, and a broker
// started later sends redeliveries with the same ids).
import { Registry as PromRegistry } from 'prom-client'
import { z } from 'zod'
import type { BrokerConfig } from '../../broker.config.js'
import { createLogger, type Logger } from '../log.js'
import type { ConsentGate } from '../outputs/consent-gate.js'
import type { Db } from '../store/db.js'
import { ID_RE } from '../topics/grammar.js'
import { InsightsEngine, type RunOptions, type RunReport } from './engine.js'
import { createInsightsMetrics } from './metrics.js'
import { RULE_IDS } from './payload.js'
import { createPreferencesMetrics } from './preferences/metrics.js'
import { PreferencesService } from './preferences/service.js'
import { PreferencesStore } from './preferences/store.js'

export const insightsRpcSchemas = [
  z.object({
    op: z.literal('insightsRun'),
    userId: z.string().regex(ID_RE).optional(),
    rule: z.enum(RULE_IDS).optional(),
    at: z.iso.datetime({ offset: true }).optional(),
  }),
] as const

export type InsightsRpcRequest = z.infer<(typeof insightsRpcSchemas)[number]>

export interface InsightsRunner {
  run(opts: RunOptions): Promise<RunReport>
}

export function runOptions(req: InsightsRpcRequest): RunOptions {
  return {
    ...(req.userId ? { userIds: [req.userId] } : {}),
    ...(req.rule ? { rule: req.rule } : {}),
    ...(req.at ? { at: new Date(req.at) } : {}),
  }
}

/** A summary fit for a terminal or a JSON reply: ids and rules, not the whole messages. */
export function summarise(r: RunReport, live: boolean) {
  return {
    at: r.at,
    live,
    users: r.users,
    withoutConsent: r.withoutConsent,
    candidates: r.candidates,
    delivered: r.delivered,
    redelivered: r.redelivered.map((p) => ({ id: p.id, rule: p.rule })),
    suppressed: r.suppressed,
  }
}

/** An engine over the database alone (no broker): it stores recommendations, nothing is published. */
export async function offlineRunner(
  db: Db,
  config: BrokerConfig,
  consent: ConsentGate,
  log: Logger = createLogger(process.env.PULSEGATE_LOG_LEVEL ?? 'warn', 'pulsegate-insights'),
) {
  const ts = await db.query<{ ok: boolean }>(`SELECT to_regclass('samples_1m') IS NOT NULL AS ok`)
  const timescale = ts.rows[0]?.ok === true
  const metrics = new PromRegistry()
  const preferences = new PreferencesService(
    new PreferencesStore(db),
    { publish: async () => {} },
    config.preferences,
    createPreferencesMetrics(metrics),
    log,
  )
  return new InsightsEngine({
    db,
    timescale: () => timescale,
    consent,
    preferences,
    publisher: { publish: () => {} },
    metrics: createInsightsMetrics(metrics),
    log,
    settings: config.insights,
  })
}
