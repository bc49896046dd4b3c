// HTTPS (WSS listener) behind the PROXY gate: the header comes before the TLS handshake; the bytes after it reach
// the TLS server (the 'pause' replay), and an HTTP request over that TLS is answered.
import net from 'node:net'
import tls from 'node:tls'
import fs from 'node:fs'
import path from 'node:path'
import { it, expect } from 'vitest'
import { createHttpServer, listen } from '../../src/transport/listeners.js'
import { buildV2Header } from '../../src/transport/proxy-protocol.js'
import { createMetrics } from '../../src/metrics.js'
import { createLogger } from '../../src/log.js'
import { initPki, pkiPaths } from '../../src/identity/pki.js'
import { tempDir } from '../helpers/harness.js'

it('a trusted load balancer’s header, then TLS, then HTTP: answered', async () => {
  const dir = tempDir()
  await initPki(path.join(dir, 'pki'))
  const p = pkiPaths(path.join(dir, 'pki'))
  const material = {
    key: fs.readFileSync(p.serverKey),
    cert: fs.readFileSync(p.serverCert),
    ca: fs.readFileSync(p.caCert),
  }
  const server = createHttpServer(
    {
      handle: () => undefined,
      maxPacketBytes: 65536,
      metrics: createMetrics(),
      log: createLogger('silent'),
      proxy: {
        mqtt: 'off',
        mqtts: 'off',
        http: 'required',
        trusted: ['127.0.0.2'],
        headerTimeoutMs: 5000,
        tlsIdentity: false,
      },
      verifyBearer: async () => {
        throw new Error('no')
      },
      onRequest: (_req, res) => {
        res.end('ok')
      },
    },
    material,
  )
  const port = await listen(server, 0, '127.0.0.1')
  const body = await new Promise<string>((resolve, reject) => {
    const raw = net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' }, () => {
      raw.write(
        buildV2Header({
          addresses: {
            family: 'IPv4',
            sourceAddress: '9.9.9.9',
            sourcePort: 9,
            destAddress: '127.0.0.1',
            destPort: port,
          },
        }),
      )
      const t = tls.connect({ socket: raw, ca: material.ca, servername: 'localhost' }, () =>
        t.write('GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'),
      )
      let d = ''
      t.on('data', (c) => {
        d += c
      })
      t.on('end', () => resolve(d))
      t.on('error', reject)
    })
  })
  expect(body).toContain('ok')
  server.close()
  fs.rmSync(dir, { recursive: true, force: true })
})
