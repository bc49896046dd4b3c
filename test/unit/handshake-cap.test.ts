// The TLS handshake cap on a real tls.Server with a fake clock: a connection that waited longer than the bound is
// closed instead of being handed to TLS, and the connection behind it still gets a full handshake.
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import tls from 'node:tls'
import { Registry } from 'prom-client'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { initPki, pkiPaths } from '../../src/identity/pki.js'
import { capHandshakes } from '../../src/limits/handshakes.js'
import { createLimitMetrics } from '../../src/limits/metrics.js'
import { createLogger } from '../../src/log.js'

/** Waits for a condition the server reaches asynchronously; the bound only ends a broken run. */
async function until(what: string, cond: () => Promise<boolean> | boolean): Promise<void> {
  const end = Date.now() + 20_000
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 10))
  }
}

describe('capHandshakes', () => {
  let dir: string
  let server: tls.Server
  let port: number
  let clock = 0
  const registry = new Registry()
  const metrics = createLimitMetrics(registry)
  const value = async (name: string) =>
    (await registry.getSingleMetric(name)?.get())?.values.reduce((s, v) => s + v.value, 0) ?? 0

  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-hcap-'))
    await initPki(dir)
    const p = pkiPaths(dir)
    server = tls.createServer({ key: fs.readFileSync(p.serverKey), cert: fs.readFileSync(p.serverCert) })
    capHandshakes(server, {
      max: 1,
      maxQueued: 10,
      maxWaitMs: 1000,
      metrics,
      log: createLogger('silent'),
      now: () => clock,
    })
    server.on('tlsClientError', () => {})
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    port = (server.address() as net.AddressInfo).port
  })
  afterAll(async () => {
    await new Promise<void>((r) => server.close(() => r()))
    fs.rmSync(dir, { recursive: true, force: true })
  })

  it('closes a connection that waited longer than maxWaitMs and hands the next one to TLS', async () => {
    // A: takes the only slot and never sends a ClientHello.
    const a = net.connect(port, '127.0.0.1')
    a.on('error', () => {})
    await until('A in progress', async () => (await value('pulsegate_tls_handshakes_in_progress')) === 1)
    // B: queued at t = 0.
    const b = net.connect(port, '127.0.0.1')
    let bClosed = false
    b.on('error', () => {})
    b.on('close', () => {
      bClosed = true
    })
    await until('B queued', async () => (await value('pulsegate_tls_handshakes_queued')) === 1)
    // 1.5 s later C arrives: B is past the bound and is closed; C waits for the slot.
    clock = 1500
    let secure = false
    const c = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
      secure = true
    })
    c.on('error', () => {})
    await until('B closed', () => bClosed)
    expect(await value('pulsegate_tls_handshake_expired_total')).toBe(1)
    expect(await value('pulsegate_tls_handshakes_queued')).toBe(1)
    expect(secure).toBe(false)
    // A gives up: its slot goes to C (fresh: it waited 0 ms on the fake clock), whose handshake completes.
    a.destroy()
    await until('C secure', () => secure)
    expect(await value('pulsegate_tls_handshake_expired_total')).toBe(1)
    expect(await value('pulsegate_tls_handshakes_queued')).toBe(0)
    c.destroy()
    await until('slot free', async () => (await value('pulsegate_tls_handshakes_in_progress')) === 0)
  })

  it('keeps a connection that waited within the bound', async () => {
    const a = net.connect(port, '127.0.0.1')
    a.on('error', () => {})
    await until('A in progress', async () => (await value('pulsegate_tls_handshakes_in_progress')) === 1)
    let secure = false
    const c = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
      secure = true
    })
    c.on('error', () => {})
    await until('C queued', async () => (await value('pulsegate_tls_handshakes_queued')) === 1)
    clock += 999
    a.destroy()
    await until('C secure', () => secure)
    expect(await value('pulsegate_tls_handshake_expired_total')).toBe(1)
    c.destroy()
  })
})

// A starved broker: the loop stalls past a handshake's timeout, so Node emits tlsClientError (timeout) and then, the
// ClientHello being read after all, completes the handshake and emits secureConnection too. The cap must count that
// handshake down once: counted twice, the count went negative under a connect storm (-663 on one marathon node) and
// the cap stopped capping.
describe('capHandshakes on a stalled loop', () => {
  it('counts a handshake that timed out and then completed once', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-hcap-stall-'))
    await initPki(dir)
    const p = pkiPaths(dir)
    const registry = new Registry()
    const metrics = createLimitMetrics(registry)
    const server = tls.createServer({
      key: fs.readFileSync(p.serverKey),
      cert: fs.readFileSync(p.serverCert),
      handshakeTimeout: 100,
    })
    capHandshakes(server, { max: 2, maxQueued: 10, maxWaitMs: 0, metrics, log: createLogger('silent') })
    const events: string[] = []
    // A listener that only records, as a logging one would: with it Node leaves the socket to the application.
    server.on('tlsClientError', () => events.push('tlsClientError'))
    server.on('secureConnection', () => events.push('secureConnection'))
    // Runs after the cap handed the socket to TLS (its handshake timer is running): the loop stalls past it.
    server.on('connection', () => {
      const end = Date.now() + 250
      while (Date.now() < end) {}
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as net.AddressInfo).port
    const c = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false })
    c.on('error', () => {})
    await until('the handshake ended', () => events.length > 0)
    await new Promise((r) => setTimeout(r, 300))
    c.destroy()
    const value = (await registry.getSingleMetric('pulsegate_tls_handshakes_in_progress')?.get())?.values[0]?.value
    expect(events[0]).toBe('tlsClientError')
    expect(value).toBe(0)
    await new Promise<void>((r) => server.close(() => r()))
    fs.rmSync(dir, { recursive: true, force: true })
  })
})
