// One HTTPS POST to the push service, signed, with a deadline on the whole exchange (connect, TLS, request, response
// headers). node:https with a keep-alive agent: a private CA is the agent's `ca`, and sockets are reused between
// deliveries instead of a TLS handshake each.
import fs from 'node:fs'
import https from 'node:https'
import { DELIVERY_HEADER, SIGNATURE_HEADER, signBody, TIMESTAMP_HEADER } from './signature.js'

export type AttemptResult = 'ok' | 'http_4xx' | 'http_5xx' | 'http_other' | 'timeout' | 'network'

export interface Attempt {
  result: AttemptResult
  status: number | null
  /** what went wrong, for last_error (no body contents) */
  error: string | null
  /** a refusal that another attempt would not change (4xx other than 408/425/429) */
  permanent: boolean
}

export interface SenderOptions {
  url: string
  secret: string
  timeoutMs: number
  concurrency: number
  caFile?: string | undefined
}

export class WebhookSender {
  private readonly agent: https.Agent
  private readonly url: URL

  constructor(private readonly o: SenderOptions) {
    this.url = new URL(o.url)
    this.agent = new https.Agent({
      keepAlive: true,
      maxSockets: o.concurrency,
      ...(o.caFile ? { ca: fs.readFileSync(o.caFile) } : {}),
    })
  }

  send(deliveryId: string, body: string): Promise<Attempt> {
    const ts = Math.floor(Date.now() / 1000)
    return new Promise<Attempt>((resolve) => {
      let settled = false
      const done = (a: Attempt) => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        resolve(a)
      }
      const req = https.request(this.url, {
        method: 'POST',
        agent: this.agent,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          'user-agent': 'pulsegate-webhook',
          [SIGNATURE_HEADER]: signBody(this.o.secret, ts, body),
          [TIMESTAMP_HEADER]: String(ts),
          [DELIVERY_HEADER]: deliveryId,
        },
      })
      const timer = setTimeout(() => {
        done({ result: 'timeout', status: null, error: `no answer within ${this.o.timeoutMs} ms`, permanent: false })
        req.destroy()
      }, this.o.timeoutMs)
      req.on('response', (res) => {
        const status = res.statusCode ?? 0
        // The body is not needed; reading it to the end lets the agent reuse the socket.
        res.resume()
        if (status >= 200 && status < 300) return done({ result: 'ok', status, error: null, permanent: false })
        const is4xx = status >= 400 && status < 500
        done({
          result: is4xx ? 'http_4xx' : status >= 500 ? 'http_5xx' : 'http_other',
          status,
          error: `HTTP ${status}`,
          permanent: is4xx && ![408, 425, 429].includes(status),
        })
      })
      req.on('error', (err: Error & { code?: string }) =>
        done({ result: 'network', status: null, error: err.code ?? err.message, permanent: false }),
      )
      req.end(body)
    })
  }

  close(): void {
    this.agent.destroy()
  }
}
