import { execFile, execFileSync } from 'node:child_process'
import { X509Certificate } from 'node:crypto'
import fs from 'node:fs'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  fingerprint256,
  generateCa,
  initPki,
  issueCertWithCa,
  issueDeviceCert,
  pkiExists,
  pkiPaths,
} from '../../src/identity/pki.js'

const OPENSSL = '/usr/bin/openssl'
const MOSQUITTO_PUB = '/usr/bin/mosquitto_pub'

const tmpDirs: string[] = []
function tmpDir(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-pki-'))
  tmpDirs.push(dir)
  return dir
}
afterAll(() => {
  for (const dir of tmpDirs) fs.rmSync(dir, { recursive: true, force: true })
})

function mode(file: string): number {
  return fs.statSync(file).mode & 0o777
}

interface HandshakeResult {
  /** Server reached secureConnection. */
  accepted: boolean
  /** Server-side verdict on the client cert (only informative when the server does not reject outright). */
  authorized?: boolean
  authorizationError?: string
  peer?: tls.DetailedPeerCertificate
  serverError?: Error & { code?: string }
  clientError?: Error & { code?: string }
  /** Client received the server's post-handshake greeting. */
  clientGotData: boolean
}

interface MtlsServer {
  port: number
  close(): Promise<void>
}

async function startMtlsServer(
  dir: string,
  rejectUnauthorized: boolean,
  onResult: (r: Partial<HandshakeResult>) => void,
): Promise<MtlsServer> {
  const p = pkiPaths(dir)
  const server = tls.createServer({
    key: fs.readFileSync(p.serverKey),
    cert: fs.readFileSync(p.serverCert),
    ca: fs.readFileSync(p.caCert),
    requestCert: true,
    rejectUnauthorized,
  })
  server.on('secureConnection', (socket) => {
    onResult({
      accepted: true,
      authorized: socket.authorized,
      authorizationError: socket.authorizationError?.toString(),
      peer: socket.getPeerCertificate(true),
    })
    if (socket.authorized) socket.end('hello\n')
    else socket.end()
  })
  server.on('tlsClientError', (err) => onResult({ serverError: err }))
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as AddressInfo
  return { port, close: () => new Promise<void>((resolve) => server.close(() => resolve())) }
}

/**
 * Connects with the given client credentials and waits until both sides have settled: the server either
 * accepted (secureConnection) or rejected (tlsClientError), and the client socket closed.
 * With rejectUnauthorized, Node's server drops a bad client cert without surfacing why (tlsClientError is
 * just ECONNRESET), so `rejectUnauthorized: false` is used separately to read authorizationError.
 */
async function handshake(
  dir: string,
  client: { cert: string; key: string; servername?: string },
  server: { rejectUnauthorized: boolean } = { rejectUnauthorized: true },
): Promise<HandshakeResult> {
  const result: HandshakeResult = { accepted: false, clientGotData: false }
  let serverSettled!: () => void
  const serverDone = new Promise<void>((resolve) => {
    serverSettled = resolve
  })
  const srv = await startMtlsServer(dir, server.rejectUnauthorized, (r) => {
    Object.assign(result, r)
    serverSettled()
  })
  try {
    const clientDone = new Promise<void>((resolve) => {
      const socket = tls.connect({
        host: '127.0.0.1',
        port: srv.port,
        ...(client.servername === undefined ? {} : { servername: client.servername }),
        ca: fs.readFileSync(pkiPaths(dir).caCert),
        cert: client.cert,
        key: client.key,
        rejectUnauthorized: true,
      })
      socket.on('data', () => {
        result.clientGotData = true
      })
      socket.on('error', (err) => {
        result.clientError = err
      })
      socket.on('close', () => resolve())
    })
    await Promise.race([
      Promise.all([serverDone, clientDone]),
      new Promise((_, reject) => setTimeout(() => reject(new Error('handshake did not settle')), 10_000)),
    ])
    return result
  } finally {
    await srv.close()
  }
}

describe('initPki', () => {
  it('creates CA and server files, is idempotent, and keeps keys private', async () => {
    const dir = path.join(tmpDir(), 'pki')
    const p = pkiPaths(dir)
    expect(p).toEqual({
      dir,
      caCert: path.join(dir, 'ca.crt'),
      caKey: path.join(dir, 'ca.key'),
      serverCert: path.join(dir, 'server.crt'),
      serverKey: path.join(dir, 'server.key'),
      devicesDir: path.join(dir, 'devices'),
    })
    expect(pkiExists(dir)).toBe(false)

    expect(await initPki(dir)).toBe(true)
    expect(pkiExists(dir)).toBe(true)
    for (const f of [p.caCert, p.caKey, p.serverCert, p.serverKey]) expect(fs.existsSync(f)).toBe(true)
    expect(fs.statSync(p.devicesDir).isDirectory()).toBe(true)
    expect(mode(p.caKey)).toBe(0o600)
    expect(mode(p.serverKey)).toBe(0o600)
    expect(fs.readFileSync(p.caKey, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/)
    expect(fs.readFileSync(p.caCert, 'utf8')).toMatch(/^-----BEGIN CERTIFICATE-----\n/)

    const caBefore = fs.readFileSync(p.caCert, 'utf8')
    const serverBefore = fs.readFileSync(p.serverCert, 'utf8')
    expect(await initPki(dir)).toBe(false)
    expect(fs.readFileSync(p.caCert, 'utf8')).toBe(caBefore)
    expect(fs.readFileSync(p.serverCert, 'utf8')).toBe(serverBefore)

    const ca = new X509Certificate(caBefore)
    expect(ca.ca).toBe(true)
    expect(ca.subject).toBe('CN=pulsegate dev CA')
    expect(ca.checkIssued(ca)).toBe(true)

    const server = new X509Certificate(serverBefore)
    expect(server.checkIssued(ca)).toBe(true)
    expect(server.verify(ca.publicKey)).toBe(true)
    expect(server.subjectAltName).toContain('DNS:localhost')
    expect(server.subjectAltName).toContain('IP Address:127.0.0.1')
    expect(server.subjectAltName).toContain('IP Address:0:0:0:0:0:0:0:1')
    expect(server.keyUsage).toContain('1.3.6.1.5.5.7.3.1')
    // Clock-skew tolerance: valid from slightly in the past.
    expect(new Date(server.validFrom).getTime()).toBeLessThan(Date.now() - 60_000)
  })

  it('reissues server cert when missing, everything on force, and adds serverHosts SANs', async () => {
    const dir = tmpDir()
    const p = pkiPaths(dir)
    await initPki(dir)
    const ca1 = fs.readFileSync(p.caCert, 'utf8')

    fs.rmSync(p.serverCert)
    expect(pkiExists(dir)).toBe(false)
    expect(await initPki(dir, { serverHosts: ['broker.example.test', '10.1.2.3', 'fd00::7'] })).toBe(true)
    expect(fs.readFileSync(p.caCert, 'utf8')).toBe(ca1)
    const san = new X509Certificate(fs.readFileSync(p.serverCert)).subjectAltName ?? ''
    expect(san).toContain('DNS:broker.example.test')
    expect(san).toContain('IP Address:10.1.2.3')
    expect(san).toContain('IP Address:FD00:0:0:0:0:0:0:7')
    expect(san).toContain('DNS:localhost')

    const before = await issueDeviceCert(dir, 'dev-a')
    expect(new X509Certificate(before.certPem).checkIssued(new X509Certificate(ca1))).toBe(true)

    expect(await initPki(dir, { force: true })).toBe(true)
    const ca2 = fs.readFileSync(p.caCert, 'utf8')
    expect(ca2).not.toBe(ca1)
    expect(mode(p.caKey)).toBe(0o600)
    // Issuance picks up the replaced CA (no stale in-process CA state).
    const after = await issueDeviceCert(dir, 'dev-a')
    expect(new X509Certificate(after.certPem).checkIssued(new X509Certificate(ca2))).toBe(true)
    expect(new X509Certificate(fs.readFileSync(p.serverCert)).checkIssued(new X509Certificate(ca2))).toBe(true)
  })
})

describe('device certificates over real TLS', () => {
  let dir: string

  beforeAll(async () => {
    dir = tmpDir()
    await initPki(dir)
  })

  it('issues a cert the mTLS server accepts, with CN, URI SAN and matching fingerprint', async () => {
    const issued = await issueDeviceCert(dir, 'band-0042_A')
    expect(issued.deviceId).toBe('band-0042_A')
    expect(issued.certPath).toBe(path.join(dir, 'devices', 'band-0042_A.crt'))
    expect(issued.keyPath).toBe(path.join(dir, 'devices', 'band-0042_A.key'))
    expect(fs.readFileSync(issued.certPath, 'utf8')).toBe(issued.certPem)
    expect(fs.readFileSync(issued.keyPath, 'utf8')).toBe(issued.keyPem)
    expect(mode(issued.keyPath)).toBe(0o600)
    expect(issued.keyPem).toMatch(/^-----BEGIN PRIVATE KEY-----\n/)
    expect(issued.fingerprint256).toMatch(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/)
    expect(issued.fingerprint256).toBe(fingerprint256(issued.certPem))
    expect(issued.serialNumber).toMatch(/^[0-7][0-9a-f]{31}$/i)
    // ~825 days, truncated to whole seconds by the certificate encoding.
    const days = (issued.notAfter.getTime() - Date.now()) / 86_400_000
    expect(days).toBeGreaterThan(824.9)
    expect(days).toBeLessThanOrEqual(825)

    const r = await handshake(dir, { cert: issued.certPem, key: issued.keyPem, servername: 'localhost' })
    expect(r.serverError).toBeUndefined()
    expect(r.clientError).toBeUndefined()
    expect(r.accepted).toBe(true)
    expect(r.authorized).toBe(true)
    expect(r.clientGotData).toBe(true)
    expect(r.peer?.subject.CN).toBe('band-0042_A')
    expect(r.peer?.subject.O).toBe('pulsegate device')
    expect(r.peer?.subjectaltname).toContain('URI:urn:pulsegate:device:band-0042_A')
    expect(r.peer?.fingerprint256).toBe(issued.fingerprint256)
    expect(r.peer?.ext_key_usage).toEqual(['1.3.6.1.5.5.7.3.2'])
  })

  it('server cert also verifies by IP SAN when the client sends no servername', async () => {
    const issued = await issueDeviceCert(dir, 'ip-check')
    const r = await handshake(dir, { cert: issued.certPem, key: issued.keyPem })
    expect(r.clientError).toBeUndefined()
    expect(r.accepted).toBe(true)
  })

  it('refuses a cert issued by a foreign CA', async () => {
    const foreign = await generateCa('evil CA')
    const cert = await issueCertWithCa(foreign.certPem, foreign.keyPem, 'intruder')
    expect(cert.fingerprint256).toBe(fingerprint256(cert.certPem))
    const client = { cert: cert.certPem, key: cert.keyPem, servername: 'localhost' }
    const r = await handshake(dir, client)
    expect(r.accepted).toBe(false)
    expect(r.clientGotData).toBe(false)
    expect(r.serverError).toBeDefined()

    const why = await handshake(dir, client, { rejectUnauthorized: false })
    expect(why.authorized).toBe(false)
    expect(why.authorizationError).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE')
    expect(why.clientGotData).toBe(false)
  })

  it('refuses an expired cert from the right CA', async () => {
    const day = 86_400_000
    const issued = await issueDeviceCert(dir, 'expired-1', {
      notBefore: new Date(Date.now() - 30 * day),
      notAfter: new Date(Date.now() - day),
    })
    expect(issued.notAfter.getTime()).toBeLessThan(Date.now())
    const client = { cert: issued.certPem, key: issued.keyPem, servername: 'localhost' }
    const r = await handshake(dir, client)
    expect(r.accepted).toBe(false)
    expect(r.clientGotData).toBe(false)
    expect(r.serverError).toBeDefined()

    const why = await handshake(dir, client, { rejectUnauthorized: false })
    expect(why.authorized).toBe(false)
    expect(why.authorizationError).toBe('CERT_HAS_EXPIRED')
  })

  it('issueCertWithCa with the real CA PEMs yields certs the server accepts (and notAfter-only expiry works)', async () => {
    const p = pkiPaths(dir)
    const caCert = fs.readFileSync(p.caCert, 'utf8')
    const caKey = fs.readFileSync(p.caKey, 'utf8')
    const ok = await issueCertWithCa(caCert, caKey, 'adhoc')
    expect((await handshake(dir, { cert: ok.certPem, key: ok.keyPem, servername: 'localhost' })).accepted).toBe(true)

    const expired = await issueCertWithCa(caCert, caKey, 'adhoc-old', { notAfter: new Date(Date.now() - 60_000) })
    const x = new X509Certificate(expired.certPem)
    expect(new Date(x.validFrom).getTime()).toBeLessThan(new Date(x.validTo).getTime())
    expect((await handshake(dir, { cert: expired.certPem, key: expired.keyPem })).accepted).toBe(false)
    expect(fs.existsSync(path.join(p.devicesDir, 'adhoc.crt'))).toBe(false)
  })

  it('openssl verify accepts device and server certs for their purposes, and can read the keys', async () => {
    const p = pkiPaths(dir)
    const issued = await issueDeviceCert(dir, 'openssl-dev')
    const verify = (...args: string[]) =>
      execFileSync(OPENSSL, ['verify', '-CAfile', p.caCert, ...args], { encoding: 'utf8', stdio: 'pipe' })
    expect(verify(issued.certPath)).toContain(': OK')
    expect(verify('-purpose', 'sslclient', issued.certPath)).toContain(': OK')
    expect(verify('-purpose', 'sslserver', p.serverCert)).toContain(': OK')
    // The EKUs are exclusive: a device cert must not pass as a server cert.
    expect(() => verify('-purpose', 'sslserver', issued.certPath)).toThrow()
    for (const key of [issued.keyPath, p.serverKey, p.caKey]) {
      execFileSync(OPENSSL, ['pkey', '-in', key, '-noout'], { stdio: 'pipe' })
    }
    // Key and cert belong together (what mosquitto checks when loading --cert/--key).
    const pubFromKey = execFileSync(OPENSSL, ['pkey', '-in', issued.keyPath, '-pubout'], { encoding: 'utf8' })
    const pubFromCert = execFileSync(OPENSSL, ['x509', '-in', issued.certPath, '-noout', '-pubkey'], {
      encoding: 'utf8',
    })
    expect(pubFromKey).toBe(pubFromCert)

    const foreign = await generateCa('other CA')
    const stray = await issueCertWithCa(foreign.certPem, foreign.keyPem, 'stray')
    const strayPath = path.join(dir, 'stray.crt')
    fs.writeFileSync(strayPath, stray.certPem)
    expect(() => verify(strayPath)).toThrow()
  })

  it.skipIf(!fs.existsSync(MOSQUITTO_PUB))(
    'mosquitto_pub completes an MQTT-over-mTLS publish with the files',
    async () => {
      const issued = await issueDeviceCert(dir, 'mosq-client')
      const p = pkiPaths(dir)
      let peerCn: string | string[] | undefined
      let sawPublish = false
      const server = tls.createServer({
        key: fs.readFileSync(p.serverKey),
        cert: fs.readFileSync(p.serverCert),
        ca: fs.readFileSync(p.caCert),
        requestCert: true,
        rejectUnauthorized: true,
      })
      // Just enough MQTT to let mosquitto_pub finish: CONNACK after CONNECT, then read the PUBLISH.
      server.on('secureConnection', (socket) => {
        peerCn = socket.getPeerCertificate().subject?.CN
        let connacked = false
        socket.on('data', (buf: Buffer) => {
          if (!connacked && buf[0] === 0x10) {
            connacked = true
            socket.write(Buffer.from([0x20, 0x02, 0x00, 0x00]))
          }
          if (buf.includes(Buffer.from('pki/test'))) sawPublish = true
        })
        socket.on('error', () => {})
      })
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
      const { port } = server.address() as AddressInfo
      try {
        await new Promise<void>((resolve, reject) => {
          execFile(
            MOSQUITTO_PUB,
            [
              ...['-h', 'localhost', '-p', String(port), '-V', 'mqttv311', '-i', 'mosq-client'],
              ...['--cafile', p.caCert, '--cert', issued.certPath, '--key', issued.keyPath],
              ...['-t', 'pki/test', '-m', 'hi', '-q', '0'],
            ],
            { timeout: 10_000 },
            (err, _stdout, stderr) => (err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve()),
          )
        })
      } finally {
        await new Promise<void>((resolve) => server.close(() => resolve()))
      }
      expect(peerCn).toBe('mosq-client')
      expect(sawPublish).toBe(true)
    },
  )
})

describe('RSA option', () => {
  it('builds an RSA-2048 PKI that OpenSSL and Node TLS accept', async () => {
    const dir = tmpDir()
    await initPki(dir, { keyType: 'rsa-2048' })
    const p = pkiPaths(dir)
    expect(new X509Certificate(fs.readFileSync(p.caCert)).publicKey.asymmetricKeyType).toBe('rsa')
    const issued = await issueDeviceCert(dir, 'rsa-dev', { keyType: 'rsa-2048' })
    expect(new X509Certificate(issued.certPem).publicKey.asymmetricKeyDetails?.modulusLength).toBe(2048)
    execFileSync(OPENSSL, ['verify', '-CAfile', p.caCert, '-purpose', 'sslclient', issued.certPath], { stdio: 'pipe' })
    execFileSync(OPENSSL, ['verify', '-CAfile', p.caCert, '-purpose', 'sslserver', p.serverCert], { stdio: 'pipe' })
    // An ECDSA device cert under the RSA CA works too.
    const ec = await issueDeviceCert(dir, 'ec-dev')
    const r = await handshake(dir, { cert: ec.certPem, key: ec.keyPem, servername: 'localhost' })
    expect(r.accepted).toBe(true)
    expect(r.peer?.fingerprint256).toBe(ec.fingerprint256)
  })
})

describe('validation', () => {
  it('rejects invalid device ids before touching disk', async () => {
    const dir = tmpDir()
    await initPki(dir)
    for (const bad of ['', 'a b', '../etc/passwd', 'dev/1', 'x'.repeat(65), 'ünï', 'dev.1', 'a\n']) {
      await expect(issueDeviceCert(dir, bad)).rejects.toThrow(/invalid device id/)
    }
    const foreign = await generateCa('x')
    await expect(issueCertWithCa(foreign.certPem, foreign.keyPem, 'no spaces')).rejects.toThrow(/invalid device id/)
    expect(fs.readdirSync(pkiPaths(dir).devicesDir)).toEqual([])
    // Boundaries of the allowed charset still work.
    await expect(issueDeviceCert(dir, 'x'.repeat(64))).resolves.toMatchObject({ deviceId: 'x'.repeat(64) })
  })

  it('refuses to issue without a CA and rejects inverted validity', async () => {
    const dir = tmpDir()
    await expect(issueDeviceCert(dir, 'dev1')).rejects.toThrow(/initPki/)
    await initPki(dir)
    await expect(
      issueDeviceCert(dir, 'dev1', { notBefore: new Date(), notAfter: new Date(Date.now() - 1000) }),
    ).rejects.toThrow(/notBefore/)
  })

  it('does not leave the Reflect metadata stubs used to load @peculiar/x509 behind', () => {
    expect('getMetadata' in Reflect).toBe(false)
    expect('defineMetadata' in Reflect).toBe(false)
  })

  it('rejects a CA key that does not belong to the CA cert', async () => {
    const a = await generateCa('A')
    const b = await generateCa('B')
    await expect(issueCertWithCa(a.certPem, b.keyPem, 'dev1')).rejects.toThrow(/does not match/)
  })
})
