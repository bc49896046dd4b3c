// The PROXY protocol parser, the trust list and the load balancer's certificate identity.
import { EventEmitter } from 'node:events'
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { lbCertificate, TrustList } from '../../src/transport/proxy-gate.js'
import {
  buildSslTlv,
  buildV2Header,
  PP2_CLIENT_CERT_CONN,
  PP2_CLIENT_SSL,
  PP2_TYPE_UNIQUE_ID,
  PP2_TYPE_SSL,
  parseProxyHeader,
  sniff,
} from '../../src/transport/proxy-protocol.js'
import { RedisReadiness } from '../../src/transport/readiness.js'

const FP = 'ab'.repeat(32)
const v4 = {
  family: 'IPv4' as const,
  sourceAddress: '198.51.100.7',
  sourcePort: 50123,
  destAddress: '10.0.0.2',
  destPort: 1883,
}

describe('PROXY v2', () => {
  it('round-trips addresses and TLVs, and reports how many bytes the header took', () => {
    fc.assert(
      fc.property(
        fc.ipV4(),
        fc.ipV4(),
        fc.integer({ min: 0, max: 65535 }),
        fc.integer({ min: 0, max: 65535 }),
        fc.uint8Array({ maxLength: 40 }),
        (src, dst, sp, dp, tail) => {
          const addresses = {
            family: 'IPv4' as const,
            sourceAddress: src,
            sourcePort: sp,
            destAddress: dst,
            destPort: dp,
          }
          const h = buildV2Header({ addresses, tlvs: [[0x02, Buffer.from('example.org')]] })
          const r = parseProxyHeader(Buffer.concat([h, Buffer.from(tail)]))
          expect(r.kind).toBe('ok')
          if (r.kind !== 'ok') return
          expect(r.consumed).toBe(h.length)
          expect(r.header.addresses).toEqual(addresses)
          expect(r.header.tlvs.get(0x02)?.toString()).toBe('example.org')
        },
      ),
    )
  })

  it('asks for more until the whole header is there, whatever the split', () => {
    const h = buildV2Header({ addresses: v4 })
    for (let i = 0; i < h.length; i++) expect(parseProxyHeader(h.subarray(0, i)).kind).toBe('more')
    expect(parseProxyHeader(h).kind).toBe('ok')
  })

  it('reads IPv6 (and IPv4-mapped) addresses as Node prints them', () => {
    const h = buildV2Header({
      addresses: { family: 'IPv6', sourceAddress: '2001:db8::1', sourcePort: 1, destAddress: '::1', destPort: 2 },
    })
    const r = parseProxyHeader(h)
    expect(r.kind === 'ok' && r.header.addresses?.sourceAddress).toBe('2001:db8::1')
    expect(r.kind === 'ok' && r.header.addresses?.destAddress).toBe('::1')
  })

  it('LOCAL (health checks) carries no client address', () => {
    const r = parseProxyHeader(buildV2Header({ local: true }))
    expect(r.kind === 'ok' && r.header.local).toBe(true)
    expect(r.kind === 'ok' && r.header.addresses).toBeNull()
  })

  it('names what is wrong with a malformed header', () => {
    const good = buildV2Header({ addresses: v4 })
    const badVersion = Buffer.from(good)
    badVersion[12] = 0x31
    expect(parseProxyHeader(badVersion)).toEqual({ kind: 'error', reason: 'v2_bad_version' })
    const badTlv = Buffer.concat([
      good.subarray(0, 14),
      Buffer.from([0, 14]),
      good.subarray(16, 28),
      Buffer.from([1, 0]),
    ])
    expect(parseProxyHeader(badTlv)).toEqual({ kind: 'error', reason: 'v2_bad_tlv' })
    const huge = Buffer.from(good)
    huge.writeUInt16BE(60_000, 14)
    expect(parseProxyHeader(huge)).toEqual({ kind: 'error', reason: 'v2_too_long' })
  })
})

describe('PROXY v1 and sniffing', () => {
  it('parses TCP4, TCP6 and UNKNOWN', () => {
    const r = parseProxyHeader(Buffer.from('PROXY TCP4 192.0.2.1 192.0.2.2 40000 1883\r\n\x10'))
    expect(r.kind === 'ok' && r.consumed).toBe(43) // the line and its CRLF; the CONNECT byte after it stays
    expect(r.kind === 'ok' && r.header.addresses?.sourcePort).toBe(40000)
    const r6 = parseProxyHeader(Buffer.from('PROXY TCP6 2001:db8::1 ::1 1 2\r\n'))
    expect(r6.kind === 'ok' && r6.header.addresses?.sourceAddress).toBe('2001:db8::1')
    const u = parseProxyHeader(Buffer.from('PROXY UNKNOWN\r\n'))
    expect(u.kind === 'ok' && u.header.local).toBe(true)
  })

  it('refuses junk and overlong lines', () => {
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 999.0.0.1 1.2.3.4 1 2\r\n')).kind).toBe('error')
    expect(parseProxyHeader(Buffer.from('PROXY TCP4 1.2.3.4 1.2.3.4 1 99999\r\n')).kind).toBe('error')
    expect(parseProxyHeader(Buffer.from(`PROXY ${'x'.repeat(120)}`)).kind).toBe('error')
  })

  it('tells MQTT, TLS and HTTP (even POST) apart from a header on the first differing byte', () => {
    expect(sniff(Buffer.from([0x10, 0x20]))).toBe('none') // MQTT CONNECT
    expect(sniff(Buffer.from([0x16, 0x03]))).toBe('none') // TLS ClientHello
    expect(sniff(Buffer.from('POST /admin/rpc'))).toBe('none')
    expect(sniff(Buffer.from('PRO'))).toBe('more')
    expect(sniff(Buffer.from([0x0d, 0x0a]))).toBe('more')
  })
})

describe('the load balancer’s word on a client certificate', () => {
  const header = (client: number, verify: number, fp: string | null, cn = 'tracker-1') => {
    const tlvs: Array<[number, Buffer]> = [[PP2_TYPE_SSL, buildSslTlv({ client, verify, cn, version: 'TLSv1.3' })]]
    if (fp !== null) tlvs.unshift([PP2_TYPE_UNIQUE_ID, Buffer.from(fp)])
    const r = parseProxyHeader(buildV2Header({ addresses: v4, tlvs }))
    if (r.kind !== 'ok') throw new Error(r.kind)
    return r.header
  }

  it('a verified certificate: CN and fingerprint in the tls.PeerCertificate format', () => {
    const id = lbCertificate(header(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, FP))
    expect(id).toEqual({ subject: { CN: 'tracker-1' }, fingerprint256: 'AB:'.repeat(31) + 'AB' })
  })

  it('no client certificate is no identity; an unverified or fingerprint-less one is refused', () => {
    expect(lbCertificate(header(PP2_CLIENT_SSL, 0, null))).toBeNull()
    expect(lbCertificate(header(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 1, FP))).toBe('invalid')
    expect(lbCertificate(header(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, null))).toBe('invalid')
    expect(lbCertificate(header(PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN, 0, 'request-42'))).toBe('invalid')
  })
})

describe('TrustList', () => {
  it('matches addresses and CIDRs, IPv4-mapped IPv6 included', () => {
    const t = new TrustList(['10.0.0.0/8', '192.0.2.10', '2001:db8::/32'])
    expect(t.has('10.1.2.3')).toBe(true)
    expect(t.has('::ffff:10.1.2.3')).toBe(true)
    expect(t.has('192.0.2.10')).toBe(true)
    expect(t.has('192.0.2.11')).toBe(false)
    expect(t.has('2001:db8::5')).toBe(true)
    expect(t.has('2001:db9::5')).toBe(false)
    expect(t.has(undefined)).toBe(false)
  })
})

describe('RedisReadiness', () => {
  class Link extends EventEmitter {
    status = 'ready'
  }

  it('is false only once a connection has been down for longer than the bound', () => {
    let now = 1000
    const r = new RedisReadiness(500, () => now)
    const link = new Link()
    r.watch(link)
    expect(r.report()).toEqual({ ok: true, downForMs: 0 })
    link.status = 'reconnecting'
    link.emit('close')
    now += 400
    expect(r.report().ok).toBe(true)
    now += 200
    expect(r.report()).toEqual({ ok: false, downForMs: 600 })
    link.status = 'ready'
    link.emit('ready')
    expect(r.report()).toEqual({ ok: true, downForMs: 0 })
  })
})
