// A port nothing listens on right now, for a child (HAProxy, Mosquitto, a broker node) that must be told its port
// before it starts. Another process may take it between close and the child's bind: benchmarks only, never tests.
import net from 'node:net'

export async function freePort(): Promise<number> {
  const s = net.createServer()
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()))
  const { port } = s.address() as net.AddressInfo
  await new Promise<void>((r) => s.close(() => r()))
  return port
}
