// PROXY protocol v1 and v2 headers (haproxy.org/download/2.6/doc/proxy-protocol.txt): what a load balancer tells us
// about the client before the first byte of the client's own stream. A small parser of our own rather than a
// package: none is in package.json (aedes-protocol-decoder / proxy-protocol-js are not), and the format is a fixed
// 16-byte prefix, an address block and type-length-value fields — less code than the glue a library would need, and
// here every malformed case is a named refusal instead of an exception.

/** The 12-byte v2 signature. */
export const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a])
const V1_PREFIX = Buffer.from('PROXY ', 'latin1')
/** v1: "a 107-byte buffer is enough" (spec §2.1). */
const V1_MAX = 107
/** v2: 16 bytes + a 16-bit length. We never need more than a few kB (TLVs of TLS identity); more is refused. */
export const V2_MAX_BODY = 4096

export const PP2_TYPE_ALPN = 0x01
export const PP2_TYPE_AUTHORITY = 0x02
export const PP2_TYPE_UNIQUE_ID = 0x05
export const PP2_TYPE_SSL = 0x20
export const PP2_SUBTYPE_SSL_VERSION = 0x21
export const PP2_SUBTYPE_SSL_CN = 0x22
export const PP2_SUBTYPE_SSL_CIPHER = 0x23
export const PP2_SUBTYPE_SSL_SIG_ALG = 0x24
export const PP2_SUBTYPE_SSL_KEY_ALG = 0x25
/** 0xE0–0xEF are for applications (spec §2.2.8); HAProxy ≥ 2.9 fills one with `set-proxy-v2-tlv-fmt(0xE0)`. */
export const PP2_TYPE_PULSEGATE_CERT_SHA256 = 0xe0
export const PP2_CLIENT_SSL = 0x01
export const PP2_CLIENT_CERT_CONN = 0x02
export const PP2_CLIENT_CERT_SESS = 0x04

export interface ProxyAddresses {
  family: 'IPv4' | 'IPv6'
  sourceAddress: string
  sourcePort: number
  destAddress: string
  destPort: number
}

/** PP2_TYPE_SSL: what the load balancer says about the TLS session it terminated. */
export interface ProxySsl {
  /** PP2_CLIENT_* bits */
  client: number
  /** 0 when the client presented a certificate and it was verified */
  verify: number
  version?: string
  cn?: string
  cipher?: string
  sigAlg?: string
  keyAlg?: string
}

export interface ProxyHeader {
  version: 1 | 2
  /** LOCAL (v2 command 0, v1 UNKNOWN): the LB's own connection, e.g. a health check; use the socket's addresses */
  local: boolean
  /** null for LOCAL, UNKNOWN, AF_UNIX or AF_UNSPEC */
  addresses: ProxyAddresses | null
  /** raw TLVs by type (v2 only) */
  tlvs: Map<number, Buffer>
  ssl: ProxySsl | null
}

export type ParseResult =
  | { kind: 'more' }
  | { kind: 'none' }
  | { kind: 'error'; reason: string }
  | { kind: 'ok'; header: ProxyHeader; consumed: number }

/** Does `buf` start (or could it still start) with a PROXY header? Decides on the first byte that differs. */
export function sniff(buf: Buffer): 'v1' | 'v2' | 'none' | 'more' {
  for (const [sig, name] of [
    [V2_SIGNATURE, 'v2'],
    [V1_PREFIX, 'v1'],
  ] as const) {
    const n = Math.min(buf.length, sig.length)
    if (buf.subarray(0, n).equals(sig.subarray(0, n))) return n === sig.length ? name : 'more'
  }
  return 'none'
}

export function parseProxyHeader(buf: Buffer): ParseResult {
  const s = sniff(buf)
  if (s === 'more' || s === 'none') return { kind: s }
  return s === 'v2' ? parseV2(buf) : parseV1(buf)
}

function parseV1(buf: Buffer): ParseResult {
  const end = buf.indexOf('\r\n', 0, 'latin1')
  if (end < 0) return buf.length >= V1_MAX ? { kind: 'error', reason: 'v1_too_long' } : { kind: 'more' }
  if (end + 2 > V1_MAX) return { kind: 'error', reason: 'v1_too_long' }
  const parts = buf.subarray(0, end).toString('latin1').split(' ')
  const base = { version: 1 as const, tlvs: new Map<number, Buffer>(), ssl: null }
  if (parts[1] === 'UNKNOWN')
    return { kind: 'ok', consumed: end + 2, header: { ...base, local: true, addresses: null } }
  if (parts.length !== 6 || (parts[1] !== 'TCP4' && parts[1] !== 'TCP6'))
    return { kind: 'error', reason: 'v1_malformed' }
  const [, proto, src, dst, sport, dport] = parts as [string, string, string, string, string, string]
  const family = proto === 'TCP4' ? 'IPv4' : 'IPv6'
  const want = family === 'IPv4' ? 4 : 6
  const port = (p: string) => (/^\d{1,5}$/.test(p) && Number(p) <= 65535 ? Number(p) : -1)
  if (ipVersion(src) !== want || ipVersion(dst) !== want || port(sport) < 0 || port(dport) < 0) {
    return { kind: 'error', reason: 'v1_malformed' }
  }
  return {
    kind: 'ok',
    consumed: end + 2,
    header: {
      ...base,
      local: false,
      addresses: { family, sourceAddress: src, sourcePort: port(sport), destAddress: dst, destPort: port(dport) },
    },
  }
}

function ipVersion(s: string): number {
  if (/^(\d{1,3})(\.\d{1,3}){3}$/.test(s) && s.split('.').every((o) => Number(o) <= 255)) return 4
  return /^[0-9a-fA-F:.]+$/.test(s) && s.includes(':') ? 6 : 0
}

function parseV2(buf: Buffer): ParseResult {
  if (buf.length < 16) return { kind: 'more' }
  const verCmd = buf[12] as number
  if (verCmd >> 4 !== 2) return { kind: 'error', reason: 'v2_bad_version' }
  const command = verCmd & 0x0f
  if (command > 1) return { kind: 'error', reason: 'v2_bad_command' }
  const famProto = buf[13] as number
  const len = buf.readUInt16BE(14)
  if (len > V2_MAX_BODY) return { kind: 'error', reason: 'v2_too_long' }
  if (buf.length < 16 + len) return { kind: 'more' }
  const body = buf.subarray(16, 16 + len)
  const fam = famProto >> 4
  let addresses: ProxyAddresses | null = null
  let offset = 0
  if (fam === 1 || fam === 2) {
    const size = fam === 1 ? 12 : 36
    if (len < size) return { kind: 'error', reason: 'v2_short_address' }
    const alen = fam === 1 ? 4 : 16
    const ip = (at: number) => (fam === 1 ? ipv4(body.subarray(at, at + 4)) : ipv6(body.subarray(at, at + 16)))
    addresses = {
      family: fam === 1 ? 'IPv4' : 'IPv6',
      sourceAddress: ip(0),
      destAddress: ip(alen),
      sourcePort: body.readUInt16BE(2 * alen),
      destPort: body.readUInt16BE(2 * alen + 2),
    }
    offset = size
  } else if (fam === 3) {
    if (len < 216) return { kind: 'error', reason: 'v2_short_address' }
    offset = 216 // AF_UNIX: no address worth keeping
  } else if (fam !== 0) {
    return { kind: 'error', reason: 'v2_bad_family' }
  }
  const tlvs = readTlvs(body.subarray(offset))
  if (!tlvs) return { kind: 'error', reason: 'v2_bad_tlv' }
  let ssl: ProxySsl | null = null
  const sslRaw = tlvs.get(PP2_TYPE_SSL)
  if (sslRaw) {
    ssl = parseSsl(sslRaw)
    if (!ssl) return { kind: 'error', reason: 'v2_bad_ssl_tlv' }
  }
  const local = command === 0
  return {
    kind: 'ok',
    consumed: 16 + len,
    header: { version: 2, local, addresses: local ? null : addresses, tlvs, ssl },
  }
}

function readTlvs(buf: Buffer): Map<number, Buffer> | null {
  const out = new Map<number, Buffer>()
  let i = 0
  while (i < buf.length) {
    if (i + 3 > buf.length) return null
    const type = buf[i] as number
    const len = buf.readUInt16BE(i + 1)
    if (i + 3 + len > buf.length) return null
    out.set(type, buf.subarray(i + 3, i + 3 + len))
    i += 3 + len
  }
  return out
}

function parseSsl(v: Buffer): ProxySsl | null {
  if (v.length < 5) return null
  const subs = readTlvs(v.subarray(5))
  if (!subs) return null
  const str = (t: number) => subs.get(t)?.toString('utf8')
  const ssl: ProxySsl = { client: v[0] as number, verify: v.readUInt32BE(1) }
  const fields = [
    ['version', PP2_SUBTYPE_SSL_VERSION],
    ['cn', PP2_SUBTYPE_SSL_CN],
    ['cipher', PP2_SUBTYPE_SSL_CIPHER],
    ['sigAlg', PP2_SUBTYPE_SSL_SIG_ALG],
    ['keyAlg', PP2_SUBTYPE_SSL_KEY_ALG],
  ] as const
  for (const [k, t] of fields) {
    const s = str(t)
    if (s !== undefined) ssl[k] = s
  }
  return ssl
}

function ipv4(b: Buffer): string {
  return `${b[0]}.${b[1]}.${b[2]}.${b[3]}`
}

function ipv6(b: Buffer): string {
  const groups: string[] = []
  for (let i = 0; i < 16; i += 2) groups.push(b.readUInt16BE(i).toString(16))
  // IPv4-mapped addresses read as Node prints them (::ffff:1.2.3.4), so trust lists and logs agree.
  if (groups.slice(0, 5).every((g) => g === '0') && groups[5] === 'ffff') return `::ffff:${ipv4(b.subarray(12))}`
  return compressIpv6(groups)
}

function compressIpv6(groups: string[]): string {
  let best = -1
  let bestLen = 1
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++
      continue
    }
    let j = i
    while (j < 8 && groups[j] === '0') j++
    if (j - i > bestLen) {
      best = i
      bestLen = j - i
    }
    i = j
  }
  if (best < 0) return groups.join(':')
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`
}

/** Builds a v2 header (tests and the bench play a load balancer with it). */
export function buildV2Header(opts: {
  local?: boolean
  addresses?: ProxyAddresses
  tlvs?: Array<[number, Buffer]>
}): Buffer {
  const parts: Buffer[] = []
  let fam = 0
  if (opts.addresses) {
    const a = opts.addresses
    fam = a.family === 'IPv4' ? 0x11 : 0x21
    const ip = (s: string) => (a.family === 'IPv4' ? Buffer.from(s.split('.').map(Number)) : ipv6Bytes(s))
    const ports = Buffer.alloc(4)
    ports.writeUInt16BE(a.sourcePort, 0)
    ports.writeUInt16BE(a.destPort, 2)
    parts.push(ip(a.sourceAddress), ip(a.destAddress), ports)
  }
  for (const [type, value] of opts.tlvs ?? []) {
    const h = Buffer.alloc(3)
    h[0] = type
    h.writeUInt16BE(value.length, 1)
    parts.push(h, value)
  }
  const body = Buffer.concat(parts)
  const head = Buffer.alloc(16)
  V2_SIGNATURE.copy(head)
  head[12] = opts.local ? 0x20 : 0x21
  head[13] = opts.local ? 0 : fam
  head.writeUInt16BE(body.length, 14)
  return Buffer.concat([head, body])
}

/** The value of a PP2_TYPE_SSL TLV (client bits, verify result, sub-TLVs). */
export function buildSslTlv(ssl: ProxySsl): Buffer {
  const head = Buffer.alloc(5)
  head[0] = ssl.client
  head.writeUInt32BE(ssl.verify, 1)
  const subs: Buffer[] = [head]
  const put = (t: number, s: string | undefined) => {
    if (s === undefined) return
    const v = Buffer.from(s, 'utf8')
    const h = Buffer.alloc(3)
    h[0] = t
    h.writeUInt16BE(v.length, 1)
    subs.push(h, v)
  }
  put(PP2_SUBTYPE_SSL_VERSION, ssl.version)
  put(PP2_SUBTYPE_SSL_CN, ssl.cn)
  return Buffer.concat(subs)
}

function ipv6Bytes(s: string): Buffer {
  const [head = '', tail = ''] = s.includes('::') ? s.split('::') : [s, '']
  const h = head ? head.split(':') : []
  const t = tail ? tail.split(':') : []
  const groups = [...h, ...Array(8 - h.length - t.length).fill('0'), ...t]
  const b = Buffer.alloc(16)
  groups.forEach((g, i) => {
    b.writeUInt16BE(Number.parseInt(g, 16), i * 2)
  })
  return b
}
