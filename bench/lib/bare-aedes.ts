// A bare Aedes 1.2 broker for bench/compare.ts, the baseline pulsegate is built on: `Aedes.createBroker()` with its
// defaults and no hooks (no authenticate/authorizePublish, no persistence beyond the in-memory default, no packet
// guard), on an ephemeral port. Run as a child process (forked with IPC, never imported) so that, like pulsegate in
// the bench's own process, it has an event loop and a CPU figure of its own. Transport from argv:
//   tcp                          plain MQTT (what Mosquitto gets)
//   mtls <ca> <cert> <key>       TLS requiring a client certificate signed by <ca>, as pulsegate's device listener,
//                                so the pulsegate/Aedes ratio compares like with like (TLS costs the same in both)
// Sends `{ type: 'listening', port }`, exits on SIGTERM or when the parent goes away.
import fs from 'node:fs'
import net from 'node:net'
import tls from 'node:tls'
import { Aedes } from 'aedes'

export type BareAedesMessage = { type: 'listening'; port: number } | { type: 'error'; message: string }

const send = (m: BareAedesMessage) => process.send?.(m)

async function main(): Promise<void> {
  const [transport, caPath, certPath, keyPath] = process.argv.slice(2)
  const broker = await Aedes.createBroker()
  let server: net.Server
  if (transport === 'mtls') {
    if (!caPath || !certPath || !keyPath) throw new Error('mtls needs <ca> <cert> <key>')
    server = tls.createServer(
      {
        ca: fs.readFileSync(caPath),
        cert: fs.readFileSync(certPath),
        key: fs.readFileSync(keyPath),
        requestCert: true,
        rejectUnauthorized: true,
      },
      (socket) => broker.handle(socket),
    )
  } else if (transport === 'tcp') {
    server = net.createServer((socket) => broker.handle(socket))
  } else throw new Error(`unknown transport ${transport}: tcp or mtls`)
  // Refused handshakes and reset sockets are the clients' business here, not a reason to die.
  server.on('tlsClientError', () => undefined)
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => resolve())
  })
  send({ type: 'listening', port: (server.address() as net.AddressInfo).port })
  const stop = () => {
    server.close()
    broker.close(() => process.exit(0))
    setTimeout(() => process.exit(0), 2000).unref()
  }
  process.on('SIGTERM', stop)
  process.on('disconnect', stop)
}

main().catch((err: Error) => {
  send({ type: 'error', message: err.message })
  process.exit(1)
})
