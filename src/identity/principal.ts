// Who a connection is, decided once at CONNECT and consulted by every ACL check.
export type Role = 'device' | 'bridge' | 'app' | 'medic' | 'admin'
export const TOKEN_ROLES: readonly Role[] = ['bridge', 'app', 'medic', 'admin']

export interface Principal {
  role: Role
  /** the (pseudonymous) user: the device's owner, or the token's `sub` */
  userId: string | null
  /** devices only */
  deviceId: string | null
  deviceKey: number | null
  /** medics: the events they may watch */
  events: readonly string[]
  /** token clients: the token's `iat` (epoch seconds), when it has one (an erasure refuses tokens issued before it) */
  issuedAt?: number
}

/**
 * Client ids are namespaced so no one can take over another's session: a device's client id is its device id;
 * a token client's is `<role>:<sub>` optionally followed by `:<anything>` (device ids cannot contain ':').
 */
export function clientIdAllowed(p: Principal, clientId: string, maxLength: number): boolean {
  if (clientId.length === 0 || clientId.length > maxLength) return false
  if (p.role === 'device') return clientId === p.deviceId
  const prefix = `${p.role}:${p.userId}`
  return clientId === prefix || clientId.startsWith(`${prefix}:`)
}
