// The privacy services a process needs to add people and record consent, opened once against a store: keys (checked
// against the fingerprints the database was set up with), the encrypted people store and the consent service.
// Opened by the CLI for offline commands and by the broker (its admin RPC) for live ones.
import type { Registry as MetricsRegistry } from 'prom-client'
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import type { Db } from '../store/db.js'
import { Registry } from '../store/registry.js'
import type { AuditActor, AuditEntry, AuditSink } from './audit-types.js'
import { ConsentService } from './consent.js'
import { checkKeyIds, registeredKeyIds, type SecretKey } from './keys.js'
import { loadPeopleKey, normalizeTimeZone, PeopleStore } from './people.js'
import { loadPseudonymKey, pseudonymFor } from './pseudonym.js'
import { ZoneOperations } from './zones.js'
import { PreferencesStore } from '../insights/preferences/store.js'

export interface AddUserInput {
  /** the app backend's account id or e-mail: used to derive the id, then dropped (never stored, logged or audited) */
  externalId: string
  birthYear?: number
  name?: string
  email?: string
  timeZone?: string
}

export interface AddedUser {
  userId: string
  created: boolean
}

export interface PrivacyServices {
  pseudonymKey: SecretKey
  peopleKey: SecretKey
  people: PeopleStore
  consent: ConsentService
  /** privacy zones; offline straight into the store (the broker replaces it with one through its preferences) */
  zones: ZoneOperations
  /** Derives the pseudonym, creates or updates the user and their encrypted name/e-mail; idempotent. */
  addUser(input: AddUserInput, actor: AuditActor): Promise<AddedUser>
}

export interface PrivacyOptions {
  audit: AuditSink
  metrics?: MetricsRegistry
  log?: Logger
}

/**
 * Until the audit log is wired in (src/ops/audit.ts, another branch), entries go to the log: they carry pseudonyms
 * only (AuditEntry's contract), so nothing here may be a name, an e-mail or an external id either.
 */
export function logAuditSink(log: Logger): AuditSink {
  return {
    async record(entry: AuditEntry) {
      log.info({ audit: entry }, 'audit')
    },
  }
}

/**
 * Loads the keys (generating key files only for a database that has none registered yet: a CLI on another machine
 * must not invent a second key), checks them against the database, encrypts any legacy plaintext people rows.
 */
export async function openPrivacyServices(
  config: Pick<BrokerConfig, 'dataDir' | 'privacy'>,
  db: Db,
  opts: PrivacyOptions,
): Promise<PrivacyServices> {
  const registered = await registeredKeyIds(db)
  const pseudonymKey = loadPseudonymKey(config, !registered.has('pseudonym'))
  const peopleKey = loadPeopleKey(config, !registered.has('people'))
  await checkKeyIds(db, { pseudonym: pseudonymKey, people: peopleKey })
  const people = new PeopleStore(db, peopleKey)
  const legacy = await people.reencryptLegacy((fn) => db.transaction(fn))
  if (legacy > 0) opts.log?.warn({ rows: legacy }, 'encrypted legacy plaintext people rows (migration 0007)')
  // Consent is loaded for every output batch and live stream: the outputs lane, not background (docs/limits.md).
  const consent = new ConsentService(db.lane('outputs'), opts.audit, {
    ...(opts.metrics ? { metrics: opts.metrics } : {}),
    ...(opts.log ? { log: opts.log } : {}),
  })

  async function addUser(input: AddUserInput, actor: AuditActor): Promise<AddedUser> {
    const userId = pseudonymFor(pseudonymKey, input.externalId)
    const timeZone = input.timeZone !== undefined ? normalizeTimeZone(input.timeZone) : undefined
    const { created, people: peopleSet } = await db.transaction(async (q) => {
      const created = await new Registry(q).ensureUser(userId, {
        ...(input.birthYear !== undefined ? { birthYear: input.birthYear } : {}),
        ...(timeZone !== undefined ? { timeZone } : {}),
      })
      const peopleSet = await new PeopleStore(q, peopleKey).upsert(userId, {
        ...(input.name !== undefined ? { name: input.name } : {}),
        ...(input.email !== undefined ? { email: input.email } : {}),
      })
      return { created, people: peopleSet }
    })
    // Which fields were set, never their values.
    await opts.audit.record({
      actor,
      action: 'user.add',
      subject: userId,
      purpose: null,
      details: {
        created,
        fields: [
          ...(input.birthYear !== undefined ? ['birthYear'] : []),
          ...(timeZone !== undefined ? ['timeZone'] : []),
          ...(peopleSet && input.name !== undefined ? ['name'] : []),
          ...(peopleSet && input.email !== undefined ? ['email'] : []),
        ],
      },
    })
    return { userId, created }
  }

  const zones = new ZoneOperations(db, new PreferencesStore(db), opts.audit)
  return { pseudonymKey, peopleKey, people, consent, zones, addUser }
}
