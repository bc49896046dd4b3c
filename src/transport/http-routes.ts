// HTTP operations beside MQTT: /healthz (process up), /readyz (database reachable, listeners bound), /metrics
// (Prometheus), /admin/rpc (registry and privacy operations for the CLI while a broker owns the embedded store, or
// named with --broker; admin JWT), /admin/export and /admin/import (streamed, portability-routes.ts), and the race-control
// console at / with its API under /console/ (console-routes.ts).
import type http from 'node:http'
import { z } from 'zod'
import type { BrokerConfig } from '../../broker.config.js'
import type { Tokens } from '../identity/tokens.js'
import * as signing from '../identity/signing-rpc.js'
import { EpsilonError } from '../insights/dp/epsilon.js'
import { dpRpcSchemas, runDpRpc } from '../insights/dp/rpc.js'
import { StatsError } from '../insights/dp/stats.js'
import { type InsightsRunner, insightsRpcSchemas, offlineRunner, runOptions, summarise } from '../insights/rpc.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { KeyError } from '../ops/keys.js'
import {
  isPrivacyRequestError,
  isPrivacyRpc,
  privacyRpcSchemas,
  type RpcPrivacyContext,
  runPrivacyRpc,
} from '../ops/privacy-rpc.js'
import type { ErasureReport } from '../ops/erase.js'
import { logAuditSink, openPrivacyServices, type PrivacyServices } from '../ops/privacy-services.js'
import type { AuditLog } from '../ops/audit.js'
import type { AuditActor, AuditEntry } from '../ops/audit-types.js'
import type { GroupCommitWriter } from '../pipeline/commit.js'
import type { Db } from '../store/db.js'
import { type ReadinessDeps, readiness, registerDatabaseGauge } from './readiness.js'
import { type DeviceRegistration, type Registry, RegistryError } from '../store/registry.js'
import { readBody } from './http-body.js'
import type { LiveRoutes } from './live-routes.js'
import { type ConsoleServices, createConsoleRoutes } from './console-routes.js'
import { handlePortability } from './portability-routes.js'

export interface RouteDeps {
  config: BrokerConfig
  metrics: Metrics
  registry: Registry
  tokens: Tokens
  db: Db
  writer: GroupCommitWriter
  isReady(): boolean
  /** the broker's Redis connection(s), when it has any: /readyz is false once one has been down past the bound */
  redis?: ReadinessDeps['redis']
  onDeviceRevoked(deviceId: string): void
  /** devices (re-)registered, possibly with a new certificate: cached verdicts about them go */
  onDevicesRegistered(deviceIds: readonly string[]): void
  /** the broker's privacy services (shared with the outputs); unset → opened here on the first privacy RPC */
  privacy?: () => Promise<PrivacyServices>
  /** when set, every /admin/rpc call is recorded (rpc.<op>) before it runs, and audit ops are served */
  audit?: AuditLog
  /** the broker's live erasure (eraseUser RPC); unset → the RPC is refused */
  eraseUser?(userId: string, actor: AuditActor): Promise<ErasureReport>
  /** the broker's recommendation engine (insightsRun RPC: published live) */
  insights?: InsightsRunner
  /** public live streams, /live/… (live-routes.ts) */
  live?: LiveRoutes
  /** the race-control console's services (console-routes.ts); unset → no console (404 at /) */
  console?: ConsoleServices
  log: Logger
}

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/)
/** users.birth_year is a smallint; out-of-range years are a 400, not a database error */
const birthYear = z.number().int().min(1900).max(2100)
/** Entries per bulk operation: a few hundred kB of JSON, one transaction of a few statements. */
export const RPC_BULK_MAX = 5000
/** A device registration, alone (registerDevice) or in bulk (registerDevices). */
const deviceRegistration = z.object({
  deviceId: id,
  userId: id,
  fingerprint: z.string().min(1),
  serial: z.string().optional(),
  notAfter: z.iso.datetime({ offset: true }).optional(),
  ...signing.signingRegistrationFields,
})
export const rpcSchema = z.discriminatedUnion('op', [
  deviceRegistration.extend({ op: z.literal('registerDevice') }),
  z.object({ op: z.literal('revokeDevice'), deviceId: id }),
  z.object({ op: z.literal('ensureUser'), userId: id, birthYear: birthYear.optional() }),
  z.object({
    op: z.literal('createEvent'),
    eventId: id,
    name: z.string().optional(),
    isPublic: z.boolean().optional(),
    distanceM: z.number().positive().optional(),
    startsAt: z.string().optional(),
  }),
  z.object({
    op: z.literal('joinEvent'),
    eventId: id,
    userId: id,
    consentLeaderboard: z.boolean().optional(),
    bib: z.string().optional(),
  }),
  // Bulk forms for provisioning fleets and swarms: a round trip and a transaction per few thousand entries.
  z.object({
    op: z.literal('registerDevices'),
    users: z
      .array(z.object({ userId: id, birthYear: birthYear.optional() }))
      .max(RPC_BULK_MAX)
      .optional(),
    devices: z.array(deviceRegistration).max(RPC_BULK_MAX),
  }),
  z.object({
    op: z.literal('joinEvents'),
    eventId: id,
    participants: z
      .array(z.object({ userId: id, consentLeaderboard: z.boolean().optional(), bib: z.string().optional() }))
      .max(RPC_BULK_MAX),
  }),
  // addUser, setConsent, getConsent (src/ops/privacy-rpc.ts)
  ...privacyRpcSchemas,
  z.object({ op: z.literal('auditVerify') }),
  z.object({ op: z.literal('auditCheckpoint') }),
  // pulsegate stats event / ledger (differential privacy; src/insights/dp/rpc.ts)
  ...dpRpcSchemas,
  // pulsegate insights run (src/insights/rpc.ts); signed readings' policy and content keys (src/identity/signing-rpc.ts)
  ...insightsRpcSchemas,
  ...signing.signingRpcSchemas,
])
export type RpcRequest = z.infer<typeof rpcSchema>

/** The registry operations, shared by the CLI (direct database) and the RPC endpoint (running broker). */
function toRegistration(d: z.infer<typeof deviceRegistration>): DeviceRegistration {
  return {
    deviceId: d.deviceId,
    userId: d.userId,
    fingerprint: d.fingerprint,
    ...(d.serial ? { serial: d.serial } : {}),
    ...(d.notAfter ? { notAfter: new Date(d.notAfter) } : {}),
    ...signing.signingOf(d),
  }
}

/** Where an operation runs: the audit log it records processing steps in, who asked, (for the privacy operations)
 *  the process's privacy services and the consent source, and (for the dp statistics) the store and the configuration. */
export interface RpcContext extends Partial<RpcPrivacyContext> {
  audit?: AuditLog
  db?: Db
  config?: BrokerConfig
  metrics?: Metrics
  insights?: InsightsRunner
}

function requireAudit(ctx: RpcContext): AuditLog {
  if (!ctx.audit) throw new RegistryError('this process keeps no audit log')
  return ctx.audit
}

export async function runRpc(registry: Registry, req: RpcRequest, ctx: RpcContext = {}): Promise<unknown> {
  if (isPrivacyRpc(req)) {
    const { services, source, actor } = ctx
    if (!services || !source || !actor) throw new Error(`${req.op} needs the privacy services`)
    return runPrivacyRpc(req, { services, source, actor, ...(ctx.erase ? { erase: ctx.erase } : {}) })
  }
  if (signing.isSigningRpc(req)) return signing.runSigningRpc(registry, req, ctx.config)
  switch (req.op) {
    case 'dpRelease':
    case 'dpLedger':
      if (!ctx.db || !ctx.config) throw new Error(`${req.op} needs the store and the configuration`)
      return runDpRpc({ db: ctx.db, dp: ctx.config.dp, ...(ctx.metrics ? { metrics: ctx.metrics } : {}) }, req)
    case 'insightsRun': {
      if (ctx.insights) return summarise(await ctx.insights.run(runOptions(req)), true)
      if (!ctx.db || !ctx.config || !ctx.services) throw new Error(`${req.op} needs the store and the configuration`)
      const runner = await offlineRunner(ctx.db, ctx.config, (await ctx.services()).consent)
      return summarise(await runner.run(runOptions(req)), false)
    }
    case 'registerDevice':
      return { deviceKey: await registry.registerDevice(toRegistration(req)) }
    case 'revokeDevice': {
      const owner = ctx.audit ? (await registry.device(req.deviceId))?.userId : undefined
      const revoked = await registry.revokeDevice(req.deviceId)
      if (revoked && ctx.audit)
        await ctx.audit.record({
          actor: ctx.actor ?? { role: 'system', id: null },
          action: 'device.revoke',
          subject: owner ?? null,
          purpose: null,
          details: { deviceId: req.deviceId },
        })
      return { revoked }
    }
    case 'auditVerify':
      return requireAudit(ctx).verify()
    case 'auditCheckpoint':
      return { checkpoint: await requireAudit(ctx).checkpoint() }
    case 'ensureUser':
      await registry.ensureUser(req.userId, req.birthYear !== undefined ? { birthYear: req.birthYear } : {})
      return { ok: true }
    case 'createEvent':
      await registry.createEvent({
        eventId: req.eventId,
        ...(req.name !== undefined ? { name: req.name } : {}),
        ...(req.isPublic !== undefined ? { isPublic: req.isPublic } : {}),
        ...(req.distanceM !== undefined ? { distanceM: req.distanceM } : {}),
        ...(req.startsAt ? { startsAt: new Date(req.startsAt) } : {}),
      })
      return { ok: true }
    case 'joinEvent':
      await registry.joinEvent(req.eventId, req.userId, {
        ...(req.consentLeaderboard !== undefined ? { consentLeaderboard: req.consentLeaderboard } : {}),
        ...(req.bib ? { bib: req.bib } : {}),
      })
      return { ok: true }
    case 'registerDevices': {
      const keys = await registry.registerDevices(
        req.devices.map(toRegistration),
        (req.users ?? []).map((u) => ({
          userId: u.userId,
          ...(u.birthYear !== undefined ? { birthYear: u.birthYear } : {}),
        })),
      )
      return { devices: keys.size }
    }
    case 'joinEvents':
      return {
        consentsRecorded: await registry.joinEvents(
          req.eventId,
          req.participants.map((j) => ({
            userId: j.userId,
            ...(j.consentLeaderboard !== undefined ? { consentLeaderboard: j.consentLeaderboard } : {}),
            ...(j.bib ? { bib: j.bib } : {}),
          })),
        ),
      }
  }
}

/** The audit row of an RPC call: the person it concerns, and ids and counts only. */
export function rpcAuditEntry(actor: AuditActor, req: RpcRequest): AuditEntry {
  const subject = 'userId' in req ? (req.userId ?? null) : null
  const details: Record<string, unknown> = {}
  if ('deviceId' in req) details.deviceId = req.deviceId
  if ('eventId' in req) details.eventId = req.eventId
  if (req.op === 'registerDevices') {
    details.devices = req.devices.length
    details.users = req.users?.length ?? 0
  }
  if (req.op === 'joinEvents') details.participants = req.participants.length
  return { actor, action: `rpc.${req.op}`, subject, purpose: null, details }
}

function send(res: http.ServerResponse, status: number, body: unknown, type = 'application/json'): void {
  const text = typeof body === 'string' ? body : JSON.stringify(body)
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' })
  res.end(text)
}

export function createHttpRoutes(deps: RouteDeps) {
  registerDatabaseGauge(deps.metrics.registry, deps.db)
  // Opened on the first privacy RPC (keys, key check, legacy re-encryption), once; a failure is retried next time.
  let privacy: Promise<PrivacyServices> | null = null
  const privacyServices = (): Promise<PrivacyServices> => {
    privacy ??= (
      deps.privacy?.() ??
      openPrivacyServices(deps.config, deps.db, {
        audit: deps.audit ?? logAuditSink(deps.log),
        metrics: deps.metrics.registry,
        log: deps.log,
      })
    ).catch((err: unknown) => {
      privacy = null
      throw err
    })
    return privacy
  }
  const consoleRoutes = deps.console
    ? createConsoleRoutes({
        config: deps.config,
        db: deps.db,
        tokens: deps.tokens,
        registry: deps.registry,
        consent: async () => (await privacyServices()).consent,
        audit: deps.audit ?? logAuditSink(deps.log),
        services: deps.console,
        metricsRegistry: deps.metrics.registry,
        log: deps.log,
      })
    : null
  return (req: http.IncomingMessage, res: http.ServerResponse): void => {
    const url = new URL(req.url ?? '/', 'http://x')
    void (async () => {
      if (req.method === 'GET' && url.pathname === '/healthz') return send(res, 200, { status: 'ok' })
      if (req.method === 'GET' && url.pathname === '/readyz') {
        const r = await readiness(deps)
        return send(res, r.ok ? 200 : 503, r.body)
      }
      if (req.method === 'GET' && url.pathname === '/metrics') {
        return send(res, 200, await deps.metrics.registry.metrics(), deps.metrics.registry.contentType)
      }
      if (req.method === 'POST' && url.pathname === '/admin/rpc') {
        const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1]
        if (!bearer) return send(res, 401, { error: 'admin token required' })
        let actor: AuditActor
        try {
          const p = await deps.tokens.verify(bearer)
          if (p.role !== 'admin') return send(res, 403, { error: 'admin role required' })
          actor = { role: 'admin', id: p.userId }
        } catch (err) {
          return send(res, 401, { error: (err as Error).message })
        }
        let body: unknown
        try {
          // The caller is an authenticated admin: room for a bulk registration (RPC_BULK_MAX devices).
          body = JSON.parse(await readBody(req, 2 * 1024 * 1024))
        } catch (err) {
          return send(res, 400, { error: `invalid JSON: ${(err as Error).message}` })
        }
        const parsed = rpcSchema.safeParse(body)
        if (!parsed.success)
          return send(res, 400, {
            error: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '),
          })
        if (deps.audit) {
          // Recorded before it runs: no admin operation happens unaudited.
          try {
            await deps.audit.record(rpcAuditEntry(actor, parsed.data))
          } catch (err) {
            return send(res, 503, { error: `audit log unavailable, nothing was done: ${(err as Error).message}` })
          }
        }
        try {
          const result = await runRpc(deps.registry, parsed.data, {
            services: privacyServices,
            source: 'rpc',
            ...(deps.audit ? { audit: deps.audit } : {}),
            actor,
            db: deps.db,
            config: deps.config,
            metrics: deps.metrics,
            ...(deps.eraseUser ? { erase: deps.eraseUser } : {}),
            ...(deps.insights ? { insights: deps.insights } : {}),
          })
          const op = parsed.data
          if (op.op === 'revokeDevice') deps.onDeviceRevoked(op.deviceId)
          else if (op.op === 'registerDevice') deps.onDevicesRegistered([op.deviceId])
          else if (op.op === 'registerDevices') deps.onDevicesRegistered(op.devices.map((d) => d.deviceId))
          else if (signing.isSigningRpc(op)) deps.onDevicesRegistered([op.deviceId])
          return send(res, 200, result)
        } catch (err) {
          if (err instanceof RegistryError || err instanceof StatsError || isPrivacyRequestError(err))
            return send(res, 409, { error: (err as Error).message })
          if (err instanceof EpsilonError) return send(res, 400, { error: err.message })
          // A key that does not match the database: the operator's to fix, said plainly (never the key itself).
          if (err instanceof KeyError) return send(res, 503, { error: err.message })
          throw err
        }
      }
      if (deps.live && (await deps.live.handle(req, res, url))) return
      if (await handlePortability(deps, req, res, url)) return
      // The race-control console: the page at /, its assets and its API (console-routes.ts).
      if (consoleRoutes && (await consoleRoutes(req, res, url))) return
      send(res, 404, { error: 'not found' })
    })().catch((err: Error) => {
      deps.log.error({ err: err.message, path: url.pathname }, 'http handler failed')
      if (!res.headersSent) send(res, 500, { error: 'internal error' })
      else res.destroy()
    })
  }
}
