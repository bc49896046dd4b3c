// The address a client connects from, for the per-address limits: the connection's remoteAddress, which is the
// client's own address from a trusted load balancer's PROXY header (src/transport/proxy-gate.ts), else the socket's
// peer. One function on purpose, so every limit keys on the same address.
import type { Client } from 'aedes'
import { connInfo } from '../transport/connection.js'

export function clientAddress(client: Client): string {
  return connInfo(client.conn)?.remoteAddress ?? ''
}
