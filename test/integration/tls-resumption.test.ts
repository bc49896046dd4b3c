// TLS session resumption on 8883 (src/transport/tls-tickets.ts): a reconnecting device resumes its session from a
// ticket and is still authenticated (registry, revocation, validity) like after a full handshake; nodes that share the
// ticket secret resume each other's tickets.
import fs from 'node:fs'
import path from 'node:path'
import type tls from 'node:tls'
import type { MqttClient } from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { issueCertWithCa, pkiPaths } from '../../src/identity/pki.js'
import { periodAt, ticketKeyFor } from '../../src/transport/tls-tickets.js'
import {
  connackCode,
  connectDevice,
  provisionDevice,
  startTestBroker,
  type TestBroker,
  token,
  waitFor,
} from '../helpers/harness.js'
import { metricValue } from '../helpers/metrics-text.js'

const SECRET = 'a-shared-ticket-secret-of-at-least-32-chars'

type Dev = { deviceId: string; cert: string; key: string }

/** Connects, and resolves the last session ticket the server sent on this connection (TLS 1.3: after the handshake). */
async function connectForTicket(
  tb: TestBroker,
  dev: Dev,
  session?: Buffer,
): Promise<{ c: MqttClient; reused: boolean; ticket: Promise<Buffer> }> {
  let ticket!: Promise<Buffer>
  let reused = false
  const c = await connectDevice(tb, dev, session ? ({ session } as object) : {}, (client) => {
    const sock = client.stream as tls.TLSSocket
    ticket = new Promise((resolve) => sock.once('session', resolve))
    sock.once('secureConnect', () => {
      reused = sock.isSessionReused()
    })
  })
  return { c, reused, ticket }
}

async function handshakes(tb: TestBroker, kind: 'full' | 'resumed'): Promise<number> {
  const text = await tb.pg.metrics.registry.metrics()
  return metricValue(text, 'pulsegate_tls_handshakes_total', { listener: 'mqtts', kind }) ?? 0
}

describe('TLS session resumption', () => {
  let a: TestBroker
  let b: TestBroker
  let other: TestBroker
  beforeAll(async () => {
    a = await startTestBroker('postgres', { tls: { ticketSecret: SECRET } })
    // b: another node of the same deployment (same PKI, same secret); other: same PKI, another secret
    b = await startTestBroker('postgres', { tls: { ticketSecret: SECRET } }, { dataDir: a.dataDir })
  })
  afterAll(async () => {
    await b?.stop()
    await a?.stop()
    await other?.stop()
  })

  it('a reconnecting device resumes its session and is the same device', async () => {
    const dev = await provisionDevice(a, 'res-1', 'res-user-1')
    const first = await connectForTicket(a, dev)
    expect(first.reused).toBe(false)
    const ticket = await first.ticket
    await first.c.endAsync()
    const full = await handshakes(a, 'full')
    const resumed = await handshakes(a, 'resumed')

    const again = await connectForTicket(a, dev, ticket)
    expect(again.reused).toBe(true)
    expect(a.pg.principalOf('res-1')).toMatchObject({ role: 'device', deviceId: 'res-1', userId: 'res-user-1' })
    expect(await handshakes(a, 'resumed')).toBe(resumed + 1)
    expect(await handshakes(a, 'full')).toBe(full)
    await again.c.endAsync()
  })

  it('a ticket resumes on another node with the same ticket secret', async () => {
    const dev = await provisionDevice(a, 'res-2', 'res-user-2')
    await b.pg.registry.registerDevice({ deviceId: 'res-2', userId: 'res-user-2', fingerprint: dev.fingerprint })
    const first = await connectForTicket(a, dev)
    const ticket = await first.ticket
    await first.c.endAsync()
    const onB = await connectForTicket(b, dev, ticket)
    expect(onB.reused).toBe(true)
    expect(b.pg.principalOf('res-2')).toMatchObject({ role: 'device', deviceId: 'res-2' })
    await onB.c.endAsync()
  })

  it('another secret: the ticket is not accepted, the device does a full handshake and still connects', async () => {
    other = await startTestBroker('postgres', { tls: { ticketSecret: `${SECRET}-other` } }, { dataDir: a.dataDir })
    const dev = await provisionDevice(a, 'res-3', 'res-user-3')
    await other.pg.registry.registerDevice({ deviceId: 'res-3', userId: 'res-user-3', fingerprint: dev.fingerprint })
    const first = await connectForTicket(a, dev)
    const ticket = await first.ticket
    await first.c.endAsync()
    const there = await connectForTicket(other, dev, ticket)
    expect(there.reused).toBe(false)
    expect(there.c.connected).toBe(true)
    await there.c.endAsync()
  })

  it('a revoked device is refused even with a valid ticket', async () => {
    const dev = await provisionDevice(a, 'res-4', 'res-user-4')
    const first = await connectForTicket(a, dev)
    const ticket = await first.ticket
    await first.c.endAsync()
    const res = await fetch(`http://127.0.0.1:${a.pg.ports.http}/admin/rpc`, {
      method: 'POST',
      headers: { authorization: `Bearer ${await token(a, 'ops', 'admin')}`, 'content-type': 'application/json' },
      body: JSON.stringify({ op: 'revokeDevice', deviceId: 'res-4' }),
    })
    expect(res.status).toBe(200)
    let reused = false
    const code = await connackCode(
      connectDevice(a, dev, { session: ticket } as object, (client) => {
        const sock = client.stream as tls.TLSSocket
        sock.once('secureConnect', () => {
          reused = sock.isSessionReused()
        })
      }),
    )
    expect(reused).toBe(true)
    expect(code).toBe(5)
  })

  it('a certificate that expired after its full handshake is refused on a resumed session', async () => {
    const p = pkiPaths(path.join(a.dataDir, 'pki'))
    // X.509 times have 1 s resolution. The first connect must land before the end of validity: 25 s covers the
    // harness's own 15 s bound for one connect on a loaded machine (10 s did not, always).
    const notAfter = new Date(Math.ceil(Date.now() / 1000) * 1000 + 25_000)
    const issued = await issueCertWithCa(fs.readFileSync(p.caCert, 'utf8'), fs.readFileSync(p.caKey, 'utf8'), 'res-5', {
      notAfter,
    })
    await a.pg.registry.registerDevice({ deviceId: 'res-5', userId: 'res-user-5', fingerprint: issued.fingerprint256 })
    const dev = { deviceId: 'res-5', cert: issued.certPem, key: issued.keyPem }
    const first = await connectForTicket(a, dev)
    const ticket = await first.ticket
    await first.c.endAsync()
    // the condition is the clock passing the certificate's end of validity
    await waitFor(() => Date.now() > notAfter.getTime() + 1000, 40_000, 100)
    const refusedBefore =
      metricValue(await a.pg.metrics.registry.metrics(), 'pulsegate_auth_refusals_total', {
        reason: 'certificate_expired',
        listener: 'mqtts',
      }) ?? 0
    const outcome = await connackCode(connectDevice(a, dev, { session: ticket } as object))
    expect(outcome).not.toBe(0)
    const refusedAfter = metricValue(await a.pg.metrics.registry.metrics(), 'pulsegate_auth_refusals_total', {
      reason: 'certificate_expired',
      listener: 'mqtts',
    })
    expect(refusedAfter).toBe(refusedBefore + 1)
  }, 90_000)
})

describe('resumption off', () => {
  let tb: TestBroker
  beforeAll(async () => {
    tb = await startTestBroker('postgres', { tls: { resumption: false } })
  })
  afterAll(async () => tb?.stop())

  it('no ticket is honoured: every connect is a full handshake', async () => {
    const dev = await provisionDevice(tb, 'res-off-1', 'res-off-user')
    let ticket: Buffer | null = null
    const c = await connectDevice(tb, dev, {}, (client) => {
      ;(client.stream as tls.TLSSocket).on('session', (t: Buffer) => {
        ticket = t
      })
    })
    await c.endAsync()
    // OpenSSL may still hand the client a session object; the server must not resume it.
    const again = await connectForTicket(tb, dev, ticket ?? undefined)
    expect(again.reused).toBe(false)
    expect(await handshakes(tb, 'resumed')).toBe(0)
    await again.c.endAsync()
  })
})

describe('ticket keys', () => {
  it('are the same for the same secret and period, and differ across periods and secrets', () => {
    const p = periodAt(Date.UTC(2026, 11, 2, 10), 720)
    expect(ticketKeyFor(SECRET, p).equals(ticketKeyFor(SECRET, p))).toBe(true)
    expect(ticketKeyFor(SECRET, p).length).toBe(48)
    expect(ticketKeyFor(SECRET, p).equals(ticketKeyFor(SECRET, p + 1))).toBe(false)
    expect(ticketKeyFor(SECRET, p).equals(ticketKeyFor(`${SECRET}x`, p))).toBe(false)
    // periods are aligned to the epoch: every node computes the same one for the same moment
    expect(periodAt(Date.UTC(2026, 11, 2, 0), 720)).toBe(periodAt(Date.UTC(2026, 11, 2, 11, 59), 720))
    expect(periodAt(Date.UTC(2026, 11, 2, 12), 720)).toBe(periodAt(Date.UTC(2026, 11, 2, 11, 59), 720) + 1)
  })
})
