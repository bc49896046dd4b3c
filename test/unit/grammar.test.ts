import { describe, expect, it } from 'vitest'
import { filterMayMatchInbound, parseTopic } from '../../src/topics/grammar.js'

describe('filterMayMatchInbound', () => {
  it.each([
    ['#', true],
    ['devices/#', true],
    ['devices/+/readings', true],
    ['devices/dev-1/readings', true],
    ['devices/dev-1/status', true],
    ['+/+/+', true],
    ['+/+/#', true],
    ['$share/ops/devices/+/readings', true],
    ['devices/+/alerts', false],
    ['devices/+/rejections', false],
    ['devices/+', false],
    ['devices/+/readings/x', false],
    ['users/#', false],
    ['users/+/readings', false],
    ['$SYS/#', false],
  ])('%s → %s', (filter, expected) => {
    expect(filterMayMatchInbound(filter)).toBe(expected)
  })
})

describe('parseTopic', () => {
  it('parses SPEC topics and refuses others', () => {
    expect(parseTopic('devices/d1/readings')).toEqual({ kind: 'device', deviceId: 'd1', leaf: 'readings' })
    expect(parseTopic('users/u1/sync/request')).toEqual({ kind: 'user', userId: 'u1', leaf: 'sync/request' })
    expect(parseTopic('users/u1/preferences')).toEqual({ kind: 'user', userId: 'u1', leaf: 'preferences' })
    expect(parseTopic('users/u1/preferences/state')).toEqual({ kind: 'user', userId: 'u1', leaf: 'preferences/state' })
    expect(parseTopic('users/u1/preferences/other')).toBeNull()
    expect(parseTopic('devices/d 1/readings')).toBeNull()
    expect(parseTopic('devices/d1/readings/x')).toBeNull()
  })

  it('consent and preferences: the request topic and its retained state', () => {
    expect(parseTopic('users/u1/consent')).toEqual({ kind: 'user', userId: 'u1', leaf: 'consent' })
    expect(parseTopic('users/u1/consent/state')).toEqual({ kind: 'user', userId: 'u1', leaf: 'consent/state' })
    expect(parseTopic('users/u1/preferences')).toEqual({ kind: 'user', userId: 'u1', leaf: 'preferences' })
    expect(parseTopic('users/u1/preferences/state')).toEqual({ kind: 'user', userId: 'u1', leaf: 'preferences/state' })
    for (const t of [
      'users/u1/consent/request',
      'users/u1/sync/state',
      'users/u1/consent/state/x',
      'users/u1/state',
      'users/u1/alerts/state',
      'users/u1/constructor/state',
      'devices/d1/consent',
    ])
      expect(parseTopic(t), t).toBeNull()
  })
})
