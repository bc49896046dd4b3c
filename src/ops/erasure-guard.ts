// Step 1 of an erasure (src/ops/erase.ts): from the moment it starts, this broker process refuses everything of the
// person, with a clear error and a metric: their CONNECTs (tokens, device certificates), their publishes (a will left
// behind included), publishes to their topics by anyone, and readings of their devices that reach the pipeline by any
// path. In memory, consulted synchronously by the hooks and the ingest stage.
//
// After the erasure: the person's device keys stay refused for the life of the process (a key is never reused, and a
// reading already past the ACL when the devices were deleted must not land under a key nobody owns), and so do tokens
// issued for them before the erasure began (an app reconnecting with its old token would otherwise bring the person
// back at once). A token issued afterwards (the person signed up again: the same pseudonym) is accepted.
import { Counter, type Registry } from 'prom-client'
import type { Principal } from '../identity/principal.js'
import type { IngestGate, IngestSource } from '../pipeline/ingest.js'
import type { TopicRef } from '../topics/grammar.js'

export type RefusalPoint = 'connect' | 'publish' | 'ingest'

export class ErasureGuard implements IngestGate {
  /** users being erased now */
  private readonly users = new Set<string>()
  /** device ids of users being erased now (device ids may be registered again afterwards) */
  private readonly deviceIds = new Set<string>()
  /** device keys erased or being erased: never accepted again by this process */
  private readonly deviceKeys = new Set<number>()
  /** user → when their last erasure began (epoch ms): tokens issued before are refused */
  private readonly erasedAt = new Map<string, number>()
  private readonly refusals: Counter

  constructor(metrics: Registry) {
    const name = 'pulsegate_erasure_refusals_total'
    this.refusals =
      (metrics.getSingleMetric(name) as Counter | undefined) ??
      new Counter({
        name,
        help: 'connects, publishes and readings refused because their user is being (or was) erased',
        labelNames: ['point'],
        registers: [metrics],
      })
  }

  /** From now on: refuse the user and these devices. Call again with more devices found later. */
  begin(userId: string, devices: readonly { deviceKey: number; deviceId: string }[], now = Date.now()): void {
    if (!this.users.has(userId)) this.erasedAt.set(userId, now)
    this.users.add(userId)
    for (const d of devices) {
      this.deviceIds.add(d.deviceId)
      this.deviceKeys.add(d.deviceKey)
    }
  }

  /** The erasure is over (done or failed): the user id and device ids are free again; keys and old tokens are not. */
  end(userId: string, devices: readonly { deviceId: string }[]): void {
    this.users.delete(userId)
    for (const d of devices) this.deviceIds.delete(d.deviceId)
  }

  isErasing(userId: string): boolean {
    return this.users.has(userId)
  }

  /** CONNECT: a device of a user being erased, an erased device key, or a token issued before the user's erasure. */
  refusesConnect(p: Pick<Principal, 'role' | 'userId' | 'deviceKey' | 'issuedAt'>): boolean {
    const refused = this.refusesPrincipal(p)
    if (refused) this.refusals.inc({ point: 'connect' })
    return refused
  }

  /** PUBLISH (before the pipeline): by such a principal, or to a topic of a user or device being erased. */
  refusesPublish(p: Pick<Principal, 'role' | 'userId' | 'deviceKey' | 'issuedAt'>, ref: TopicRef | null): boolean {
    const refused =
      this.refusesPrincipal(p) ||
      (ref?.kind === 'user' && this.users.has(ref.userId)) ||
      (ref?.kind === 'device' && this.deviceIds.has(ref.deviceId))
    if (refused) this.refusals.inc({ point: 'publish' })
    return refused
  }

  /** The ingest stage, right before rows are queued: whatever path they took to get there. */
  refusesReadings(src: IngestSource): boolean {
    const refused = this.users.has(src.userId) || this.deviceKeys.has(src.deviceKey) || this.deviceIds.has(src.deviceId)
    if (refused) this.refusals.inc({ point: 'ingest' })
    return refused
  }

  private refusesPrincipal(p: Pick<Principal, 'role' | 'userId' | 'deviceKey' | 'issuedAt'>): boolean {
    if (p.deviceKey !== null && this.deviceKeys.has(p.deviceKey)) return true
    if (p.userId === null) return false
    if (this.users.has(p.userId)) return true
    if (p.role === 'device') return false
    const at = this.erasedAt.get(p.userId)
    if (at === undefined) return false
    // A token without iat cannot be told apart from an old one: refused (fail closed). Seconds resolution: a token
    // issued in the second the erasure began is refused too.
    return p.issuedAt === undefined || p.issuedAt <= Math.floor(at / 1000)
  }
}
