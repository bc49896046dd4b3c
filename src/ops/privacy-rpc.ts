// The admin RPC's people, consent and erasure operations (addUser, setConsent, getConsent, eraseUser), run where the data lives: by the
// CLI against the store, or by the broker's /admin/rpc. The external id travels to the process holding the pseudonym
// key and stops there: rpcAuditView() is the form of a request fit for audit details and logs.
import { z } from 'zod'
import type { AuditActor } from './audit-types.js'
import { ConsentError, PURPOSES } from './consent.js'
import { ErasureError, type ErasureReport } from './erase.js'
import { PeopleError, PEOPLE_VALUE_MAX } from './people.js'
import type { PrivacyServices } from './privacy-services.js'
import { EXTERNAL_ID_MAX, ExternalIdError } from './pseudonym.js'
import { ZoneError } from './zones.js'
import { MAX_ZONE_RADIUS_M, ZONE_LABEL_MAX } from '../insights/preferences/wire.js'

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/)

export const privacyRpcSchemas = [
  z.object({
    op: z.literal('addUser'),
    externalId: z.string().min(1).max(EXTERNAL_ID_MAX),
    birthYear: z.number().int().min(1900).max(2100).optional(),
    name: z.string().min(1).max(PEOPLE_VALUE_MAX).optional(),
    email: z.string().min(1).max(PEOPLE_VALUE_MAX).optional(),
    timeZone: z.string().min(1).max(64).optional(),
  }),
  z.object({ op: z.literal('setConsent'), userId: id, purpose: z.enum(PURPOSES), granted: z.boolean() }),
  z.object({ op: z.literal('getConsent'), userId: id }),
  z.object({ op: z.literal('eraseUser'), userId: id }),
  // privacy zones (src/ops/zones.ts)
  z.object({
    op: z.literal('setZone'),
    userId: id,
    zoneId: id,
    lat: z.number().min(-90).max(90),
    lon: z.number().min(-180).max(180),
    radiusM: z.number().min(1).max(MAX_ZONE_RADIUS_M),
    label: z.string().min(1).max(ZONE_LABEL_MAX).optional(),
  }),
  z.object({ op: z.literal('removeZone'), userId: id, zoneId: id }),
  z.object({ op: z.literal('listZones'), userId: id }),
] as const

export type PrivacyRpcRequest = z.infer<(typeof privacyRpcSchemas)[number]>
export const PRIVACY_RPC_OPS: ReadonlySet<string> = new Set(privacyRpcSchemas.map((s) => s.shape.op.value))

export function isPrivacyRpc(req: { op: string }): req is PrivacyRpcRequest {
  return PRIVACY_RPC_OPS.has(req.op)
}

/** Who asks, through which channel (the consent history's source), and the services (opened on first use). */
export interface RpcPrivacyContext {
  services(): Promise<PrivacyServices>
  source: 'cli' | 'rpc'
  actor: AuditActor
  /** erases a user where this runs: live in a broker, the database alone offline (src/ops/erase.ts) */
  erase?(userId: string, actor: AuditActor): Promise<ErasureReport>
}

/** A refused request (unknown user, bad time zone, …) as opposed to a failure. */
export function isPrivacyRequestError(err: unknown): boolean {
  return (
    err instanceof ConsentError ||
    err instanceof PeopleError ||
    err instanceof ExternalIdError ||
    err instanceof ErasureError ||
    err instanceof ZoneError
  )
}

/** A request as it may be recorded: addUser without its external id, name and e-mail (only whether they were set). */
export function rpcAuditView<R extends { op: string }>(req: R): Record<string, unknown> {
  if (req.op !== 'addUser') return { ...req }
  const { externalId: _x, name, email, ...rest } = req as unknown as PrivacyRpcRequest & { op: 'addUser' }
  return { ...rest, name: name !== undefined, email: email !== undefined }
}

export async function runPrivacyRpc(req: PrivacyRpcRequest, ctx: RpcPrivacyContext): Promise<unknown> {
  if (req.op === 'eraseUser') {
    // Needs no keys: an operator must be able to erase a person even where the pseudonym key is not at hand.
    if (!ctx.erase) throw new ErasureError('erasure is not available here')
    return ctx.erase(req.userId, ctx.actor)
  }
  const p = await ctx.services()
  switch (req.op) {
    case 'addUser': {
      const { op: _op, ...input } = req
      return p.addUser(input, ctx.actor)
    }
    case 'setConsent':
      return { state: await p.consent.set(req.userId, req.purpose, req.granted, ctx.source, ctx.actor) }
    case 'getConsent':
      return { state: await p.consent.state(req.userId), history: await p.consent.history(req.userId) }
    case 'setZone': {
      const { op: _op, userId, zoneId, ...circle } = req
      return { zones: await p.zones.set(userId, { id: zoneId, ...circle }, ctx.actor) }
    }
    case 'removeZone':
      return p.zones.remove(req.userId, req.zoneId, ctx.actor)
    case 'listZones':
      return { zones: await p.zones.list(req.userId) }
  }
}
