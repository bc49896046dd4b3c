// The erasure's in-process refusals (src/ops/erasure-guard.ts) and the plan's pure parts: who is refused during and
// after an erasure, which client ids are the person's, how the plan's statements find rows.
import { Registry } from 'prom-client'
import { describe, expect, it } from 'vitest'
import type { Principal } from '../../src/identity/principal.js'
import { ownsClientId } from '../../src/ops/erase-live.js'
import { ErasureGuard } from '../../src/ops/erasure-guard.js'
import { ERASURE_PLAN, whereOf } from '../../src/ops/erasure-plan.js'

const app = (userId: string, issuedAt?: number): Principal => ({
  role: 'app',
  userId,
  deviceId: null,
  deviceKey: null,
  events: [],
  ...(issuedAt !== undefined ? { issuedAt } : {}),
})
const device = (userId: string, deviceKey: number): Principal => ({
  role: 'device',
  userId,
  deviceId: `d${deviceKey}`,
  deviceKey,
  events: [],
})

async function counted(reg: Registry): Promise<Record<string, number>> {
  const v = await reg.getSingleMetric('pulsegate_erasure_refusals_total')?.get()
  return Object.fromEntries((v?.values ?? []).map((x) => [String(x.labels.point), x.value]))
}

describe('ErasureGuard', () => {
  it('during an erasure refuses the person everywhere, and nobody else', async () => {
    const reg = new Registry()
    const g = new ErasureGuard(reg)
    const t = 1_800_000_000_000
    g.begin('ann', [{ deviceKey: 7, deviceId: 'trk-ann' }], t)
    expect(g.isErasing('ann')).toBe(true)
    expect(g.refusesConnect(app('ann', t / 1000 + 100))).toBe(true)
    expect(g.refusesConnect(device('ann', 7))).toBe(true)
    expect(g.refusesConnect(app('bob', t / 1000 - 100))).toBe(false)
    // Anyone publishing to the person's or their device's topics; the person publishing anywhere.
    const admin: Principal = { role: 'admin', userId: 'ops', deviceId: null, deviceKey: null, events: [] }
    expect(g.refusesPublish(admin, { kind: 'user', userId: 'ann', leaf: 'live' })).toBe(true)
    expect(g.refusesPublish(admin, { kind: 'device', deviceId: 'trk-ann', leaf: 'config' })).toBe(true)
    expect(g.refusesPublish(admin, { kind: 'user', userId: 'bob', leaf: 'live' })).toBe(false)
    expect(g.refusesPublish(device('ann', 7), null)).toBe(true)
    expect(g.refusesReadings({ userId: 'ann', deviceKey: 7, deviceId: 'trk-ann' })).toBe(true)
    // A bridge of someone else naming the device (its owner looked up before the erasure began): refused by key.
    expect(g.refusesReadings({ userId: 'bob', deviceKey: 7, deviceId: 'trk-ann' })).toBe(true)
    expect(g.refusesReadings({ userId: 'bob', deviceKey: 8, deviceId: 'trk-bob' })).toBe(false)
    expect(await counted(reg)).toEqual({ connect: 2, publish: 3, ingest: 2 })
  })

  it('afterwards: the device keys stay refused, tokens issued before the erasure too; new tokens and devices work', () => {
    const g = new ErasureGuard(new Registry())
    const t = 1_800_000_000_500
    g.begin('ann', [{ deviceKey: 7, deviceId: 'trk-ann' }], t)
    g.end('ann', [{ deviceId: 'trk-ann' }])
    expect(g.isErasing('ann')).toBe(false)
    expect(g.refusesReadings({ userId: 'ann', deviceKey: 7, deviceId: 'trk-ann' })).toBe(true)
    // The device id registered again (a new key) is someone's new device.
    expect(g.refusesReadings({ userId: 'cy', deviceKey: 9, deviceId: 'trk-ann' })).toBe(false)
    expect(g.refusesConnect(device('ann', 9))).toBe(false)
    const startSec = Math.floor(t / 1000)
    expect(g.refusesConnect(app('ann', startSec - 60))).toBe(true)
    expect(g.refusesConnect(app('ann', startSec))).toBe(true) // the same second: cannot tell, refused
    expect(g.refusesConnect(app('ann'))).toBe(true) // no iat: refused
    expect(g.refusesConnect(app('ann', startSec + 1))).toBe(false)
    // A second erasure of the same person moves the cut-off forward.
    g.begin('ann', [], t + 10_000)
    g.end('ann', [])
    expect(g.refusesConnect(app('ann', startSec + 1))).toBe(true)
  })
})

describe('erasure plan', () => {
  it('names each table once and ends with the registry', () => {
    const tables = ERASURE_PLAN.map((e) => e.table)
    expect(new Set(tables).size).toBe(tables.length)
    expect(tables.slice(-2)).toEqual(['devices', 'users'])
    expect(tables.indexOf('consents')).toBeLessThan(tables.indexOf('users'))
  })

  it('finds rows by the columns an entry names, with typed parameters', () => {
    const devices = [
      { deviceKey: 3, deviceId: 'a', fingerprint: null },
      { deviceKey: 4, deviceId: 'b', fingerprint: 'F' },
    ]
    expect(whereOf(['user_id', 'device_id'], 'ann', devices)).toEqual({
      where: 'user_id = $1::text OR device_id = ANY($2::text[])',
      params: ['ann', ['a', 'b']],
    })
    expect(whereOf(['device_key'], 'ann', devices)).toEqual({
      where: 'device_key = ANY($1::int[])',
      params: [[3, 4]],
    })
  })
})

describe('ownsClientId', () => {
  it("is the person's namespace of every token role and their devices' ids, nothing that only resembles it", () => {
    const devices = new Set(['trk-ann'])
    for (const id of ['app:ann', 'app:ann:phone', 'bridge:ann:x', 'medic:ann', 'admin:ann:1', 'trk-ann'])
      expect(ownsClientId('ann', devices, id)).toBe(true)
    for (const id of ['app:anna', 'app:bob:ann', 'ann', 'device:ann', 'trk-ann2', 'app:ann2:phone'])
      expect(ownsClientId('ann', devices, id)).toBe(false)
  })
})
