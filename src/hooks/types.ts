// What the hook modules share: the principal of each connected client, the Aedes hook signatures, and the refusal
// of a CONNECT (counted, logged, answered with an MQTT 3.1.1 CONNACK return code).
import type { AedesOptions, AuthenticateError, Client } from 'aedes'
import type { Principal } from '../identity/principal.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'

/** Who each connected client is, set at authenticate and read by every later hook. */
export type Principals = WeakMap<Client, Principal>

export type AuthenticateHook = NonNullable<AedesOptions['authenticate']>
export type AuthorizePublishHook = NonNullable<AedesOptions['authorizePublish']>
export type AuthorizeSubscribeHook = NonNullable<AedesOptions['authorizeSubscribe']>
export type AuthorizeForwardHook = NonNullable<AedesOptions['authorizeForward']>

/** CONNACK return codes a refusal may carry: 2 identifier rejected, 3 server unavailable, 4 bad credentials, 5 not authorized. */
export type RefusalCode = 2 | 3 | 4 | 5

export function authError(message: string, code: RefusalCode): AuthenticateError {
  return Object.assign(new Error(message), { returnCode: code }) as AuthenticateError
}

export interface RefusalDeps {
  metrics: Pick<Metrics, 'authRefusals'>
  log: Logger
}

/** Refuses a CONNECT: the reason goes to the metric and the log (client ids are pseudonymous), the code to the client. */
export function refuse(
  deps: RefusalDeps,
  listener: string,
  reason: string,
  code: RefusalCode,
  clientId: string,
  done: (e: AuthenticateError, ok: null) => void,
): void {
  deps.metrics.authRefusals.inc({ reason, listener })
  deps.log.info({ listener, reason, clientId }, 'connection refused')
  done(authError(reason, code), null)
}
