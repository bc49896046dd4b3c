// The webhook signature (docs/outputs.md "Webhooks"): HMAC-SHA256 with the shared secret over
// `<timestamp>.<body>`, sent as `X-Pulsegate-Signature: sha256=<hex>` beside `X-Pulsegate-Timestamp: <unix seconds>`.
// The timestamp is inside the MAC, so a receiver that refuses timestamps older than a few minutes refuses replays; it
// is taken afresh at every attempt, so a retry an hour later still passes that check.
import crypto from 'node:crypto'

export const SIGNATURE_HEADER = 'x-pulsegate-signature'
export const TIMESTAMP_HEADER = 'x-pulsegate-timestamp'
export const DELIVERY_HEADER = 'x-pulsegate-delivery'

export function signBody(secret: string, timestampS: number, body: string): string {
  return `sha256=${crypto.createHmac('sha256', secret).update(`${timestampS}.${body}`).digest('hex')}`
}

/**
 * A receiver's check, for push services written in TypeScript (the README shows the same in a few lines of any
 * language): the signature matches in constant time and the timestamp is within `toleranceS` of `nowS`.
 */
export function verifySignature(
  secret: string,
  body: string,
  headers: { signature: string | undefined; timestamp: string | undefined },
  toleranceS = 300,
  nowS = Math.floor(Date.now() / 1000),
): boolean {
  const { signature, timestamp } = headers
  if (!signature || !timestamp || !/^\d{1,12}$/.test(timestamp)) return false
  if (Math.abs(nowS - Number(timestamp)) > toleranceS) return false
  const expected = Buffer.from(signBody(secret, Number(timestamp), body))
  const got = Buffer.from(signature)
  return got.length === expected.length && crypto.timingSafeEqual(got, expected)
}
