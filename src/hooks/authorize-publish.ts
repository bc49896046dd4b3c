// PUBLISH from a client: may they (topic ACL), and what becomes of it. A sync request is acked at once and answered on
// the user's sync/response topic; readings and status are handed to the pipeline, whose commit decides the PUBACK;
// a consent change from the user's app is committed, then acked, and its new state goes out retained on
// users/{uid}/consent/state; preference edits are acked once merged and stored; anything else an admin publishes
// (device config) is routed and retained as sent. Sync requests and consent changes are audited (pseudonyms only).
import { type AclLookups, canPublish } from '../identity/acl.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { AuditSink } from '../ops/audit-types.js'
import { ConsentError, type ConsentStateMessage } from '../ops/consent-model.js'
import type { ErasureGuard } from '../ops/erasure-guard.js'
import type { Done, IngestSource } from '../pipeline/ingest.js'
import { topicFor } from '../topics/grammar.js'
import type { ConsumedRouting } from './consumed-routing.js'
import type { AuthorizePublishHook, Principals } from './types.js'

/** The ingest pipeline's entry points (Ingest): `done` is called once the batch is committed or refused. */
export interface IngestEntry {
  handleReadings(src: IngestSource, payload: Buffer, qos: number, done: Done): void
  handleStatus(src: IngestSource, payload: Buffer, qos: number, done: Done): void
}

/** Answers users/{uid}/sync/request (SyncService). */
export interface SyncEntry {
  handle(userId: string, payload: Buffer): Promise<void>
}

/** Takes an app's users/{uid}/consent payload (ConsentService): refuses a bad one with an error that says why. */
export interface ConsentEntry {
  handleAppPublish(userId: string, payload: Buffer, clientId: string): Promise<ConsentStateMessage>
}

/** Merges users/{uid}/preferences edits (PreferencesService): resolves when stored or refused, rejects if unstored. */
export interface PreferencesEntry {
  handle(userId: string, payload: Buffer): Promise<unknown>
}

export interface AuthorizePublishDeps {
  lookups: AclLookups
  principals: Principals
  ingest: IngestEntry
  sync: SyncEntry
  consent: ConsentEntry
  audit: AuditSink
  /** the broker's own publisher (the consent state it answers with) */
  publish(topic: string, payload: string, qos: 0 | 1, retain: boolean): void
  preferences: PreferencesEntry
  routing: Pick<ConsumedRouting, 'consume'>
  metrics: Pick<Metrics, 'packetsIn' | 'aclRefusals'>
  log: Logger
  /** refuses publishes by, and to the topics of, people being erased (their wills included) */
  erasure?: Pick<ErasureGuard, 'refusesPublish'>
}

export function createAuthorizePublish(deps: AuthorizePublishDeps): AuthorizePublishHook {
  const { lookups, principals, ingest, sync, consent, preferences, audit, publish, routing, metrics, log, erasure } =
    deps
  return (client, packet, done) => {
    const p = client ? principals.get(client) : undefined
    if (!client || !p) {
      // Wills left by a dead broker node (client null) and unknown clients publish nothing.
      done(new Error('not authorized'))
      return
    }
    metrics.packetsIn.inc({ qos: String(packet.qos) })
    canPublish(p, packet.topic, lookups)
      .then(async (decision) => {
        if (!decision.ok) {
          metrics.aclRefusals.inc({ action: 'publish', role: p.role })
          log.info({ clientId: client.id, topic: packet.topic, reason: decision.reason }, 'publish refused')
          done(new Error(`publish to ${packet.topic} refused: ${decision.reason}`))
          return
        }
        const ref = decision.ref
        if (erasure?.refusesPublish(p, ref)) {
          log.info({ clientId: client.id, topic: packet.topic }, 'publish refused: erasure')
          done(new Error(`publish to ${packet.topic} refused: the data of its user is being erased`))
          return
        }
        if (ref?.kind === 'user' && ref.leaf === 'sync/request') {
          // Acked at once; the answer comes on users/{uid}/sync/response.
          done()
          // Nothing is disclosed without its audit row: when the row cannot be written (database busy or gone) the
          // app is told `unavailable` and asks again.
          const payload = packet.payload as Buffer
          const userId = ref.userId
          audit
            .record({ actor: { role: p.role, id: p.userId }, action: 'sync.request', subject: userId, purpose: null })
            .then(
              () => sync.handle(userId, payload),
              (err: Error) => {
                log.error(
                  { err: err.message, action: 'sync.request' },
                  'audit record failed: sync request not answered',
                )
                publish(
                  topicFor.syncResponse(userId),
                  JSON.stringify({
                    requestId: requestIdOf(payload),
                    error: 'unavailable',
                    detail: 'audit log unavailable',
                  }),
                  1,
                  false,
                )
              },
            )
          return
        }
        if (ref?.kind === 'user' && ref.leaf === 'consent') {
          // Consumed like readings: the change lives in the consent history, never as a retained message.
          packet.retain = false
          routing.consume(packet)
          const userId = ref.userId
          consent.handleAppPublish(userId, packet.payload as Buffer, client.id).then(
            (state) => {
              publish(topicFor.consentState(userId), JSON.stringify(state), 1, true)
              done()
            },
            (err: Error) => {
              // MQTT 3.1.1 has no negative PUBACK: a bad payload is acked, logged and counted (ConsentService), and
              // changes nothing; a store failure is not acked, so the app sends it again.
              log.info({ clientId: client.id, err: err.message }, 'consent change refused')
              if (err instanceof ConsentError) done()
              else done(new Error('consent store unavailable'))
            },
          )
          return
        }
        if (ref?.kind === 'user' && ref.leaf === 'preferences') {
          // PUBACK once merged and stored; a bad message is acked too (MQTT 3.1.1 has no negative PUBACK) and answered
          // on preferences/state. An app's retain flag must not keep its raw edits as the topic's retained message.
          packet.retain = false
          preferences.handle(ref.userId, packet.payload as Buffer).then(
            () => done(),
            () => done(new Error('preferences not stored: database unavailable')),
          )
          return
        }
        // Only inbound device topics are consumed; an admin's config publish is routed (and retained) as sent.
        if (ref?.kind !== 'device' || (ref.leaf !== 'readings' && ref.leaf !== 'status')) {
          done()
          return
        }
        // Inbound telemetry is consumed here, never kept as a retained message, and not routed (consumed-routing.ts).
        packet.retain = false
        routing.consume(packet)
        let src: IngestSource
        if (p.role === 'device' && p.deviceKey !== null && p.userId !== null) {
          src = { deviceId: ref.deviceId, deviceKey: p.deviceKey, userId: p.userId }
        } else {
          const owner = await lookups.deviceOwner(ref.deviceId)
          if (!owner) {
            metrics.aclRefusals.inc({ action: 'publish', role: p.role })
            done(new Error(`device ${ref.deviceId} is not registered`))
            return
          }
          src = { deviceId: ref.deviceId, deviceKey: owner.deviceKey, userId: owner.userId }
        }
        if (ref.leaf === 'readings') ingest.handleReadings(src, packet.payload as Buffer, packet.qos, done)
        else ingest.handleStatus(src, packet.payload as Buffer, packet.qos, done)
      })
      .catch((err: Error) => {
        log.warn({ err: err.message }, 'publish authorization failed')
        done(new Error('publish authorization unavailable'))
      })
  }
}

/** The requestId of a sync request, if it has one (the answer to a request not served still names it). */
function requestIdOf(payload: Buffer): string | null {
  try {
    const id = (JSON.parse(payload.toString('utf8')) as { requestId?: unknown }).requestId
    return typeof id === 'string' ? id : null
  } catch {
    return null
  }
}
