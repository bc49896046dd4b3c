// The operator's side of privacy zones (`pulsegate users zones`, admin RPC setZone/removeZone/listZones). A zone is a
// register of the user's synced preferences (`privacyZones.<id>`), so an operator's edit is an edit like an app's:
// stamped by the node `operator` just above the field's stored stamp (an app whose clock runs ahead must not make
// the operator's change lose), merged by the same CRDT. Live, it goes through the broker's PreferencesService (cache,
// zone index and retained state updated before the answer); offline, straight into the store.
import { ZONE_PREFIX } from '../insights/preferences/crdt.js'
import { formatHlc, type Hlc } from '../insights/preferences/hlc.js'
import type { PrivacyZone } from '../insights/preferences/reader.js'
import { project } from '../insights/preferences/crdt.js'
import type { HandleOutcome } from '../insights/preferences/service.js'
import type { PreferencesStore } from '../insights/preferences/store.js'
import { MAX_PRIVACY_ZONES, parsePreferencesMessage } from '../insights/preferences/wire.js'
import type { Queryable } from '../store/db.js'
import { isValidId } from '../topics/grammar.js'
import type { AuditActor, AuditSink } from './audit-types.js'

/** A request the caller has to fix (unknown user, bad zone): the CLI exits 2, the RPC answers 400. */
export class ZoneError extends Error {}

export const OPERATOR_NODE = 'operator'

/** Merges a preferences message as if the user's app had sent it (the broker's PreferencesService.handle). */
export type ApplyEdit = (userId: string, payload: Buffer) => Promise<HandleOutcome>

export class ZoneOperations {
  constructor(
    private readonly db: Queryable,
    private readonly store: PreferencesStore,
    private readonly audit: AuditSink,
    /** live: through the broker; absent: offline, into the store */
    private readonly apply?: ApplyEdit,
  ) {}

  async list(userId: string): Promise<PrivacyZone[]> {
    await this.checkUser(userId)
    return project((await this.store.read([userId])).get(userId) ?? new Map()).privacyZones ?? []
  }

  /** Adds the zone, or replaces the one with its id. Returns the user's zones after it. */
  async set(userId: string, zone: PrivacyZone, actor: AuditActor): Promise<PrivacyZone[]> {
    const { id, ...circle } = zone
    const current = await this.list(userId)
    if (!current.some((z) => z.id === id) && current.length >= MAX_PRIVACY_ZONES)
      throw new ZoneError(`${userId} has ${current.length} privacy zones, the most there may be`)
    await this.edit(userId, id, circle)
    // The zone's id and size only: an audit row outlives an erasure, a home address must not.
    await this.audit.record({
      actor,
      action: 'zones.set',
      subject: userId,
      purpose: null,
      details: { zoneId: id, radiusM: circle.radiusM },
    })
    return this.list(userId)
  }

  /** Removes the zone; false if the user had none with that id. */
  async remove(userId: string, zoneId: string, actor: AuditActor): Promise<{ removed: boolean; zones: PrivacyZone[] }> {
    const had = (await this.list(userId)).some((z) => z.id === zoneId)
    if (had) {
      await this.edit(userId, zoneId, null)
      await this.audit.record({ actor, action: 'zones.remove', subject: userId, purpose: null, details: { zoneId } })
    }
    return { removed: had, zones: await this.list(userId) }
  }

  private async edit(userId: string, zoneId: string, value: Omit<PrivacyZone, 'id'> | null): Promise<void> {
    await this.checkUser(userId)
    if (!isValidId(zoneId))
      throw new ZoneError(`invalid zone id ${JSON.stringify(zoneId)} (expected [A-Za-z0-9_-]{1,64})`)
    const field = `${ZONE_PREFIX}${zoneId}`
    const stored = (await this.store.read([userId])).get(userId)?.get(field)
    const now = Date.now()
    const hlc: Hlc =
      stored && stored.hlc.wall >= now
        ? { wall: stored.hlc.wall, counter: stored.hlc.counter + 1, node: OPERATOR_NODE }
        : { wall: now, counter: 0, node: OPERATOR_NODE }
    const payload = Buffer.from(JSON.stringify({ node: OPERATOR_NODE, edits: [{ field, value, hlc: formatHlc(hlc) }] }))
    if (this.apply) {
      const res = await this.apply(userId, payload)
      if (res.outcome === 'refused') throw new ZoneError(res.detail)
      return
    }
    // The stamp is the server's own: no clock bound to apply.
    const parsed = parsePreferencesMessage(payload, now, Number.POSITIVE_INFINITY)
    if (!parsed.ok) throw new ZoneError(parsed.detail)
    await this.store.merge(userId, new Map(parsed.entries.map((e) => [e.field, e.entry])))
  }

  private async checkUser(userId: string): Promise<void> {
    if (!isValidId(userId)) throw new ZoneError(`invalid user id ${JSON.stringify(userId)}`)
    const res = await this.db.query('SELECT 1 FROM users WHERE user_id = $1', [userId])
    if (res.rows.length === 0) throw new ZoneError(`unknown user ${userId}`)
  }
}
