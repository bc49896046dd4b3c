// A real TCP proxy in front of PostgreSQL that a test can cut and restore: the database "goes away" exactly as it
// does when a server dies or a network partitions (connections reset, new ones refused). It can also slow the link:
// every chunk is held `latencyMs` in each direction (a far or overloaded database), order kept.
import net from 'node:net'
import { createTestDatabase } from './harness.js'

export interface TcpProxy {
  port: number
  cut(): void
  restore(): void
  /** from now on, each chunk waits this long each way (0: none); chunks already held keep their order */
  setLatency(ms: number): void
  /** new connections go to this port from now on (a server restarted elsewhere, the address clients know kept) */
  retarget(port: number): void
  close(): Promise<void>
}

/** Writes chunks to `to` no earlier than `latency()` after they arrived and never ahead of an earlier chunk. */
function delayedPipe(from: net.Socket, to: net.Socket, latency: () => number): void {
  const held: { at: number; chunk: Buffer }[] = []
  let timer: NodeJS.Timeout | null = null
  const release = () => {
    timer = null
    const now = performance.now()
    while (held.length > 0 && (held[0] as { at: number }).at <= now) {
      if (!to.destroyed) to.write((held.shift() as { chunk: Buffer }).chunk)
      else held.length = 0
    }
    if (held.length > 0) timer = setTimeout(release, (held[0] as { at: number }).at - now)
  }
  from.on('data', (chunk: Buffer) => {
    const ms = latency()
    if (ms <= 0 && held.length === 0) {
      to.write(chunk)
      return
    }
    const last = held.length > 0 ? (held[held.length - 1] as { at: number }).at : 0
    held.push({ at: Math.max(performance.now() + ms, last), chunk })
    timer ??= setTimeout(release, Math.max(0, (held[0] as { at: number }).at - performance.now()))
  })
  to.on('close', () => {
    if (timer) clearTimeout(timer)
    held.length = 0
  })
}

export async function startTcpProxy(targetHost: string, initialPort: number): Promise<TcpProxy> {
  let targetPort = initialPort
  let up = true
  let latencyMs = 0
  const latency = () => latencyMs
  const pairs = new Set<net.Socket>()
  const server = net.createServer((client) => {
    if (!up) {
      client.destroy()
      return
    }
    const upstream = net.connect(targetPort, targetHost)
    pairs.add(client)
    pairs.add(upstream)
    const done = () => {
      client.destroy()
      upstream.destroy()
      pairs.delete(client)
      pairs.delete(upstream)
    }
    client.on('error', done).on('close', done)
    upstream.on('error', done).on('close', done)
    delayedPipe(client, upstream, latency)
    delayedPipe(upstream, client, latency)
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  return {
    port: (server.address() as net.AddressInfo).port,
    cut() {
      up = false
      for (const s of pairs) s.destroy()
      pairs.clear()
    },
    restore() {
      up = true
    },
    setLatency(ms) {
      latencyMs = ms
    },
    retarget(port) {
      targetPort = port
    },
    close() {
      for (const s of pairs) s.destroy()
      return new Promise((r) => server.close(() => r()))
    },
  }
}

export interface ProxiedDatabase {
  /** the database's URL through the proxy: what the broker under test gets */
  url: string
  proxy: TcpProxy
  /** closes the proxy, then drops the database (after the broker stopped) */
  close(): Promise<void>
}

/** A fresh test database reached through a TcpProxy, for the tests that take PostgreSQL away or slow it down. */
export async function testDatabaseBehindProxy(): Promise<ProxiedDatabase> {
  const database = await createTestDatabase()
  const u = new URL(database.url)
  const proxy = await startTcpProxy(u.hostname, Number(u.port || 5432))
  u.port = String(proxy.port)
  return {
    url: u.toString(),
    proxy,
    async close() {
      await proxy.close()
      await database.drop()
    },
  }
}
