// The privacy RPC requests: validated by the endpoint's schema, and recordable only without personal values.
import { describe, expect, it } from 'vitest'
import { isPrivacyRpc, rpcAuditView } from '../../src/ops/privacy-rpc.js'
import { rpcSchema } from '../../src/transport/http-routes.js'

describe('privacy RPC requests', () => {
  it('addUser, setConsent and getConsent are part of the admin RPC; bad ones are refused', () => {
    const add = rpcSchema.parse({ op: 'addUser', externalId: 'acct-9', name: 'N', email: 'e@x.example' })
    expect(isPrivacyRpc(add)).toBe(true)
    expect(isPrivacyRpc(rpcSchema.parse({ op: 'revokeDevice', deviceId: 'd1' }))).toBe(false)
    expect(rpcSchema.safeParse({ op: 'setConsent', userId: 'u1', purpose: 'marketing', granted: true }).success).toBe(
      false,
    )
    expect(rpcSchema.safeParse({ op: 'addUser', externalId: '' }).success).toBe(false)
    expect(rpcSchema.safeParse({ op: 'addUser', externalId: 'a', birthYear: 1800 }).success).toBe(false)
    expect(rpcSchema.safeParse({ op: 'getConsent', userId: 'not valid' }).success).toBe(false)
  })

  it('the audit view of addUser keeps neither the external id nor the name nor the e-mail', () => {
    const req = rpcSchema.parse({
      op: 'addUser',
      externalId: 'acct-secret-1',
      name: 'Secret Name',
      email: 'secret@x.example',
      birthYear: 1990,
    })
    const view = rpcAuditView(req)
    expect(view).toEqual({ op: 'addUser', birthYear: 1990, name: true, email: true })
    expect(JSON.stringify(view)).not.toMatch(/acct-secret|Secret Name|secret@/)
    const other = rpcSchema.parse({ op: 'setConsent', userId: 'u1', purpose: 'research', granted: false })
    expect(rpcAuditView(other)).toEqual(other)
  })
})
