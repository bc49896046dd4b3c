// The address a client connects from, for the per-address limits. One function on purpose: once the load balancer's
// PROXY protocol header is read (branch `edge`), the real client address replaces the socket's peer here and nowhere
// else.
import type { Client } from 'aedes'
import { connInfo } from '../transport/connection.js'

export function clientAddress(client: Client): string {
  return connInfo(client.conn)?.remoteAddress ?? ''
}
