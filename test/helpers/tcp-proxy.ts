// A real TCP proxy in front of PostgreSQL that a test can cut and restore: the database "goes away" exactly as it
// does when a server dies or a network partitions (connections reset, new ones refused).
import net from 'node:net'

export interface TcpProxy {
  port: number
  cut(): void
  restore(): void
  close(): Promise<void>
}

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  let up = true
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
    client.pipe(upstream)
    upstream.pipe(client)
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
    close() {
      for (const s of pairs) s.destroy()
      return new Promise((r) => server.close(() => r()))
    },
  }
}
