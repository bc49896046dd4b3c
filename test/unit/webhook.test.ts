// The webhook's pure parts: the receiver-side signature check and the backoff schedule.
import crypto from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { pushTopic, toPushable } from '../../src/outputs/webhook/body.js'
import { backoffMs } from '../../src/outputs/webhook/service.js'
import { verifySignature } from '../../src/outputs/webhook/signature.js'

const SECRET = 'unit-secret-0123456789abcdef-0123456789'
const sign = (ts: number, body: string) =>
  `sha256=${crypto.createHmac('sha256', SECRET).update(`${ts}.${body}`).digest('hex')}`

describe('verifySignature', () => {
  const body = '{"type":"alert"}'
  const now = 1_800_000_000
  it('accepts the signature of this body and timestamp', () => {
    expect(verifySignature(SECRET, body, { signature: sign(now, body), timestamp: String(now) }, 300, now)).toBe(true)
  })
  it('refuses another body, another timestamp, another secret, an old timestamp, missing headers', () => {
    const h = { signature: sign(now, body), timestamp: String(now) }
    expect(verifySignature(SECRET, `${body} `, h, 300, now)).toBe(false)
    expect(verifySignature(SECRET, body, { ...h, timestamp: String(now + 1) }, 300, now)).toBe(false)
    expect(verifySignature(`${SECRET}x`, body, h, 300, now)).toBe(false)
    expect(verifySignature(SECRET, body, h, 300, now + 301)).toBe(false)
    expect(verifySignature(SECRET, body, { signature: undefined, timestamp: String(now) }, 300, now)).toBe(false)
    expect(verifySignature(SECRET, body, { signature: h.signature, timestamp: 'x' }, 300, now)).toBe(false)
  })
})

describe('backoffMs', () => {
  it('doubles per attempt up to the cap, half of each step random', () => {
    expect(backoffMs(1, 1000, 60_000, () => 0)).toBe(500)
    expect(backoffMs(1, 1000, 60_000, () => 1)).toBe(1000)
    expect(backoffMs(4, 1000, 60_000, () => 0)).toBe(4000)
    expect(backoffMs(4, 1000, 60_000, () => 1)).toBe(8000)
    expect(backoffMs(30, 1000, 60_000, () => 0)).toBe(30_000)
    expect(backoffMs(30, 1000, 60_000, () => 1)).toBe(60_000)
  })
})

describe('push bodies', () => {
  it('pushes only users/{uid}/alerts and users/{uid}/recommendations', () => {
    expect(pushTopic('users/alice/alerts')).toEqual({ userId: 'alice', kind: 'alert' })
    expect(pushTopic('users/alice/recommendations')).toEqual({ userId: 'alice', kind: 'recommendation' })
    expect(pushTopic('events/race1/alerts')).toBeNull()
    expect(pushTopic('users/alice/live')).toBeNull()
  })
  it('an alert push leaves out the position and evidence', () => {
    const msg = {
      id: 'a1',
      kind: 'stopped_abnormal',
      severity: 'critical',
      state: 'opened',
      userId: 'alice',
      deviceId: 'trk-1',
      eventId: 'race1',
      openedAt: 1,
      resolvedAt: null,
      evidence: { t: 2, hr: null, lat: 52.5, lon: 13.4 },
    }
    const body = JSON.parse(toPushable('alert', 'alice', JSON.stringify(msg)).body('d1')) as Record<string, unknown>
    expect(JSON.stringify(body)).not.toMatch(/lat|lon|trk-1|hr/)
    expect(body).toEqual({
      type: 'alert',
      deliveryId: 'd1',
      userId: 'alice',
      alert: {
        id: 'a1',
        kind: 'stopped_abnormal',
        severity: 'critical',
        state: 'opened',
        eventId: 'race1',
        openedAt: 1,
        resolvedAt: null,
        t: 2,
      },
    })
  })
  it('a message that is not JSON or has no id throws', () => {
    expect(() => toPushable('alert', 'alice', 'nope')).toThrow()
    expect(() => toPushable('recommendation', 'alice', '{}')).toThrow()
  })
})
