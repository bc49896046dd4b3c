// JWTs for apps, phone bridges, medics and admins (jose). HS256 with a secret in dev; a JWKS URL in production.
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { createRemoteJWKSet, type JWTPayload, type JWTVerifyGetKey, jwtVerify, SignJWT } from 'jose'
import type { BrokerConfig } from '../../broker.config.js'
import { isValidId } from '../topics/grammar.js'
import { type Principal, type Role, TOKEN_ROLES } from './principal.js'

export type TokenRefusal = 'expired' | 'bad_signature' | 'bad_claims' | 'bad_role' | 'malformed'

export class TokenError extends Error {
  constructor(
    readonly reason: TokenRefusal,
    message: string,
  ) {
    super(message)
  }
}

/** The dev secret lives in the data dir so tokens survive restarts; created 0600 on first use. */
export function devSecret(dataDir: string): string {
  const file = path.join(dataDir, 'jwt.secret')
  try {
    return fs.readFileSync(file, 'utf8').trim()
  } catch {
    fs.mkdirSync(dataDir, { recursive: true })
    const secret = crypto.randomBytes(32).toString('base64url')
    fs.writeFileSync(file, secret, { mode: 0o600, flag: 'wx' })
    return secret
  }
}

export interface SignOptions {
  sub: string
  role: Role
  events?: string[]
  /** seconds */
  ttl: number
}

export class Tokens {
  private readonly secret: Uint8Array | null
  private readonly jwks: JWTVerifyGetKey | null

  constructor(private readonly config: Pick<BrokerConfig, 'jwt' | 'dataDir'>) {
    if (config.jwt.jwksUrl) {
      this.jwks = createRemoteJWKSet(new URL(config.jwt.jwksUrl))
      this.secret = config.jwt.secret ? new TextEncoder().encode(config.jwt.secret) : null
    } else {
      this.jwks = null
      this.secret = new TextEncoder().encode(config.jwt.secret ?? devSecret(config.dataDir))
    }
  }

  async sign(o: SignOptions): Promise<string> {
    if (!this.secret) throw new Error('cannot sign tokens: only a JWKS URL is configured (tokens come from your IdP)')
    if (!isValidId(o.sub)) throw new Error(`invalid user id ${JSON.stringify(o.sub)}: use [A-Za-z0-9_-]{1,64}`)
    const jwt = new SignJWT({ role: o.role, ...(o.events ? { events: o.events } : {}) })
      .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
      .setSubject(o.sub)
      .setIssuer(this.config.jwt.issuer)
      .setAudience(this.config.jwt.audience)
      .setIssuedAt()
      .setExpirationTime(Math.floor(Date.now() / 1000) + o.ttl)
    return jwt.sign(this.secret)
  }

  /** Verifies signature, exp, iss and aud, then the claims pulsegate needs; throws TokenError with a reason. */
  async verify(token: string): Promise<Principal> {
    let payload: JWTPayload
    try {
      const opts = { issuer: this.config.jwt.issuer, audience: this.config.jwt.audience }
      const res = this.jwks
        ? await jwtVerify(token, this.jwks, opts)
        : await jwtVerify(token, this.secret as Uint8Array, { ...opts, algorithms: ['HS256'] })
      payload = res.payload
    } catch (err) {
      const code = (err as { code?: string }).code ?? ''
      if (code === 'ERR_JWT_EXPIRED') throw new TokenError('expired', 'token expired')
      if (code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') throw new TokenError('bad_signature', 'bad token signature')
      if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') throw new TokenError('bad_claims', (err as Error).message)
      throw new TokenError('malformed', `invalid token: ${(err as Error).message}`)
    }
    const role = payload['role']
    if (typeof role !== 'string' || !TOKEN_ROLES.includes(role as Role)) {
      throw new TokenError('bad_role', `token role ${JSON.stringify(role)} is not one of ${TOKEN_ROLES.join(', ')}`)
    }
    if (typeof payload.sub !== 'string' || !isValidId(payload.sub))
      throw new TokenError('bad_claims', 'token sub is not a valid user id')
    const events = payload['events']
    const eventList = Array.isArray(events)
      ? events.filter((e): e is string => typeof e === 'string' && isValidId(e))
      : []
    return {
      role: role as Role,
      userId: payload.sub,
      deviceId: null,
      deviceKey: null,
      events: eventList,
      ...(typeof payload.iat === 'number' ? { issuedAt: payload.iat } : {}),
    }
  }
}

/** Parses a TTL like 30s, 15m, 1h, 7d (or plain seconds). */
export function parseTtl(ttl: string): number {
  const m = /^(\d+)\s*([smhd]?)$/.exec(ttl.trim())
  if (!m) throw new Error(`invalid --ttl ${JSON.stringify(ttl)}: use e.g. 30m, 1h, 7d`)
  const n = Number(m[1])
  const unit = m[2] || 's'
  return n * ({ s: 1, m: 60, h: 3600, d: 86400 } as Record<string, number>)[unit]!
}
