// What a running pulsegate offers (startPulsegate in broker.ts builds it): its parts, for the CLI, the simulator's
// embedded broker, benchmarks and tests.
import type { Aedes } from 'aedes'
import type { BrokerConfig } from '../broker.config.js'
import type { ControlPlane } from './cluster/control-plane.js'
import type { Principal } from './identity/principal.js'
import type { Tokens } from './identity/tokens.js'
import type { DpPublisher } from './insights/dp/publisher.js'
import type { InsightsEngine } from './insights/engine.js'
import type { PreferencesService } from './insights/preferences/service.js'
import type { Limits } from './limits/index.js'
import type { Logger } from './log.js'
import type { Metrics } from './metrics.js'
import type { AuditActor } from './ops/audit-types.js'
import type { ErasureReport, ErasureStage } from './ops/erase.js'
import type { ErasureGuard } from './ops/erasure-guard.js'
import type { OutputEngine } from './outputs/engine.js'
import type { LeaderboardStore } from './outputs/leaderboard.js'
import type { WebhookService } from './outputs/webhook/service.js'
import type { GroupCommitWriter } from './pipeline/commit.js'
import type { Ingest } from './pipeline/ingest.js'
import type { Db } from './store/db.js'
import type { Registry } from './store/registry.js'
import type { ListenerPorts } from './transport/start-listeners.js'

export interface Pulsegate {
  config: BrokerConfig
  log: Logger
  metrics: Metrics
  db: Db
  registry: Registry
  tokens: Tokens
  broker: Aedes
  ingest: Ingest
  writer: GroupCommitWriter
  outputs: OutputEngine
  /** synced user preferences; the PreferencesReader of the recommendation engine */
  preferences: PreferencesService
  leaderboard: LeaderboardStore
  /** differentially private event statistics (events/{eid}/stats) */
  dp: DpPublisher
  /** personalised recommendations (users/{uid}/recommendations) */
  insights: InsightsEngine
  /** push for offline apps (src/outputs/webhook/); null without webhook.url */
  webhooks: WebhookService | null
  /** true when the store has TimescaleDB (hypertables, rollups) */
  timescale: boolean
  ports: ListenerPorts
  /** publishes from the broker itself (rejections, alerts, live snapshots) */
  publish(topic: string, payload: string | Buffer, qos: 0 | 1, retain: boolean): void
  /** the principal of a connected client id, if any */
  principalOf(clientId: string): Principal | undefined
  /** erases every trace of a user, live (src/ops/erase.ts); two erasures of one user run one after the other */
  eraseUser(
    userId: string,
    opts?: { actor?: AuditActor; onStage?: (stage: ErasureStage) => void | Promise<void> },
  ): Promise<ErasureReport>
  /** what this process refuses because of erasures */
  erasure: ErasureGuard
  /** changes written by other processes (LISTEN/NOTIFY), src/cluster/control-plane.ts */
  control: ControlPlane
  /** per-client rate limits, connection limits, the TLS handshake cap (src/limits) */
  limits: Limits
  stop(): Promise<void>
}

export interface StartOptions {
  log?: Logger
}
