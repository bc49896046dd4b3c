// SUBSCRIBE: may they (topic ACL). A refused filter gets SUBACK 0x80 and the connection stays. An admin whose filter
// can match inbound telemetry becomes a tap, so consumed readings are routed to it (consumed-routing.ts). Medics' and
// admins' subscriptions (event topics, other users' topics, taps on readings) are audited: they see other people's data.
import { type AclLookups, canSubscribe } from '../identity/acl.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Role } from '../identity/principal.js'
import type { AuditSink } from '../ops/audit-types.js'
import { filterMayMatchInbound } from '../topics/grammar.js'
import type { ConsumedRouting } from './consumed-routing.js'
import type { AuthorizeSubscribeHook, Principals } from './types.js'

/** Publishes a user's preferences state retained if this process has not yet (PreferencesService). */
export interface RetainedPreferences {
  ensureRetained(userId: string): Promise<void>
}

export interface AuthorizeSubscribeDeps {
  lookups: AclLookups
  principals: Principals
  routing: Pick<ConsumedRouting, 'tap'>
  audit: AuditSink
  preferences: RetainedPreferences
  metrics: Pick<Metrics, 'aclRefusals'>
  log: Logger
}

export function createAuthorizeSubscribe(deps: AuthorizeSubscribeDeps): AuthorizeSubscribeHook {
  const { lookups, principals, routing, audit, preferences, metrics, log } = deps
  const audited = (action: string, topic: string, role: Role, id: string | null) =>
    audit
      .record({ actor: { role, id }, action, subject: null, purpose: null, details: { topic } })
      .catch((err: Error) => log.error({ err: err.message, action }, 'audit record failed'))
  return (client, sub, done) => {
    const p = principals.get(client)
    if (!p) {
      done(null, null)
      return
    }
    canSubscribe(p, sub.topic, lookups).then(
      (decision) => {
        if (decision.ok) {
          // The decision was async: a client that has gone meanwhile must not keep routing on for good.
          const tap = p.role === 'admin' && filterMayMatchInbound(sub.topic)
          if (tap && !client.closed) routing.tap(client)
          if (tap) void audited('tap.readings', sub.topic, p.role, p.userId)
          else if (p.role === 'medic' || (p.role === 'admin' && sub.topic.startsWith('events/')))
            void audited('subscribe.event', sub.topic, p.role, p.userId)
          else if (p.role === 'admin') void audited('subscribe.admin', sub.topic, p.role, p.userId)
          const ref = decision.ref
          if (ref?.kind === 'user' && ref.leaf === 'preferences/state') {
            // The retained state is in place before Aedes reads the retained store for this subscription. Without
            // the database it is granted all the same: the state then comes with the next edit.
            const grant = () => done(null, sub)
            preferences.ensureRetained(ref.userId).then(grant, grant)
            return
          }
          done(null, sub)
          return
        }
        metrics.aclRefusals.inc({ action: 'subscribe', role: p.role })
        log.info({ clientId: client.id, topic: sub.topic, reason: decision.reason }, 'subscribe refused')
        done(null, null) // SUBACK 0x80 for this filter; the connection stays
      },
      () => done(null, null),
    )
  }
}
