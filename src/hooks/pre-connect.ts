// CONNECT, before credentials: the MQTT 3.1.1 rules on a zero-byte client id, and the connection limits
// (src/limits). A refusal is only noted here and answered by `guardAuthenticate` with a CONNACK return code (Aedes'
// preConnect can only drop the connection without one), before the credential check, so it costs no look-up.
// A zero-byte id with CleanSession=1 gets an id in the principal's namespace once authentication knows the principal
// [MQTT-3.1.3-6, -7]; with CleanSession=0 it is refused with CONNACK 2 [MQTT-3.1.3-8].
import { randomUUID } from 'node:crypto'
import type { AedesOptions, Client } from 'aedes'
import type { Principal } from '../identity/principal.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import { connInfo } from '../transport/connection.js'
import { type AuthenticateHook, type RefusalCode, refuse } from './types.js'

type PreConnectHook = NonNullable<AedesOptions['preConnect']>

export interface PreConnectDeps {
  /** the connection limits (ConnectGuard); null admits everyone */
  admit(client: Client, clientId: string): { reason: string; code: RefusalCode } | null
  metrics: Pick<Metrics, 'authRefusals'>
  log: Logger
}

const zeroLengthIds = new WeakSet<Client>()
const refusals = new WeakMap<Client, { reason: string; code: RefusalCode }>()

/** true if the client sent a zero-byte client id (Aedes has given it a placeholder `aedes_<uuid>`) */
export function sentZeroLengthId(client: Client): boolean {
  return zeroLengthIds.has(client)
}

/** The id a server assigns [MQTT-3.1.3-6]: a device's own id (its only one), else `<role>:<sub>:<uuid>`. */
export function assignedClientId(p: Principal): string {
  return p.role === 'device' && p.deviceId ? p.deviceId : `${p.role}:${p.userId}:${randomUUID()}`
}

export function createPreConnect(deps: PreConnectDeps): PreConnectHook {
  return (client, packet, done) => {
    const clientId = packet.clientId ?? ''
    if (clientId.length === 0) {
      if (!packet.clean) refusals.set(client, { reason: 'empty_client_id_persistent', code: 2 })
      else zeroLengthIds.add(client)
    }
    if (!refusals.has(client)) {
      const refusal = deps.admit(client, clientId)
      if (refusal) refusals.set(client, refusal)
    }
    done(null, true)
  }
}

/** Answers a refusal noted at preConnect with its CONNACK code; otherwise authenticates as usual. */
export function guardAuthenticate(deps: PreConnectDeps, authenticate: AuthenticateHook): AuthenticateHook {
  return (client, username, password, done) => {
    const refusal = refusals.get(client)
    if (!refusal) {
      authenticate(client, username, password, done)
      return
    }
    const listener = connInfo(client.conn)?.listener ?? 'unknown'
    refuse(deps, listener, refusal.reason, refusal.code, client.id, done)
  }
}
