// Production token verification: RS256 tokens checked against a JWKS served over HTTP (as an IdP would).
import type { webcrypto } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Tokens } from '../../src/identity/tokens.js'
import { tempDir } from '../helpers/harness.js'

let server: http.Server
let tokens: Tokens
let key: webcrypto.CryptoKey
let otherKey: webcrypto.CryptoKey

beforeAll(async () => {
  const pair = await generateKeyPair('RS256')
  key = pair.privateKey
  otherKey = (await generateKeyPair('RS256')).privateKey
  const jwk = { ...(await exportJWK(pair.publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }
  server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify({ keys: [jwk] }))
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`
  tokens = new Tokens({
    dataDir: tempDir(),
    jwt: { jwksUrl: url, issuer: 'https://idp.example', audience: 'pulsegate' },
  })
})
afterAll(() => new Promise<void>((r) => server.close(() => r())))

const sign = (k: webcrypto.CryptoKey, claims: Record<string, unknown>, iss = 'https://idp.example') =>
  new SignJWT(claims)
    .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
    .setSubject('alice')
    .setIssuer(iss)
    .setAudience('pulsegate')
    .setExpirationTime('5m')
    .sign(k)

describe('JWKS verification', () => {
  it('accepts a token signed by a key in the JWKS', async () => {
    expect(await tokens.verify(await sign(key, { role: 'medic', events: ['e1'] }))).toMatchObject({
      role: 'medic',
      userId: 'alice',
      events: ['e1'],
    })
  })
  it('refuses a token signed by another key', async () => {
    await expect(tokens.verify(await sign(otherKey, { role: 'app' }))).rejects.toMatchObject({
      reason: 'bad_signature',
    })
  })
  it('refuses another issuer', async () => {
    await expect(tokens.verify(await sign(key, { role: 'app' }, 'https://evil.example'))).rejects.toMatchObject({
      reason: 'bad_claims',
    })
  })
  it('cannot sign tokens itself (they come from the IdP)', async () => {
    await expect(tokens.sign({ sub: 'alice', role: 'app', ttl: 60 })).rejects.toThrow(/JWKS/)
  })
})
