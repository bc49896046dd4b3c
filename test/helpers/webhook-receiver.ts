// The operator's push service for the webhook tests: a real HTTPS endpoint that records what it gets and answers as
// told, per user.
import https from 'node:https'
import type net from 'node:net'

export interface Push {
  type: string
  deliveryId: string
  userId: string
  alert?: Record<string, unknown>
}
export interface Received {
  headers: Record<string, string | string[] | undefined>
  body: string
  json: Push
}
export type Behaviour = 'ok' | 'hang' | number

/** The operator's push service, as far as pulsegate can tell: an HTTPS endpoint that answers as told, per user. */
export class Receiver {
  readonly received: Received[] = []
  readonly behaviour = new Map<string, Behaviour>()
  private server: https.Server | null = null
  port = 0

  constructor(private readonly tls: { key: Buffer; cert: Buffer }) {}

  async up(): Promise<void> {
    if (this.server) return
    const server = https.createServer(this.tls, (req, res) => {
      const chunks: Buffer[] = []
      req.on('data', (c: Buffer) => chunks.push(c))
      req.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8')
        const json = JSON.parse(body) as Push
        this.received.push({ headers: req.headers, body, json })
        const b = this.behaviour.get(json.userId) ?? 'ok'
        if (b === 'hang') return // never answered: the sender's timeout ends it
        res.writeHead(b === 'ok' ? 204 : b).end()
      })
    })
    this.server = server
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject)
      server.listen(this.port, '127.0.0.1', () => resolve())
    })
    this.port = (server.address() as net.AddressInfo).port
  }

  async down(): Promise<void> {
    const s = this.server
    if (!s) return
    this.server = null
    const closed = new Promise<void>((r) => s.close(() => r()))
    s.closeAllConnections()
    await closed
  }

  of(userId: string): Received[] {
    return this.received.filter((r) => r.json.userId === userId)
  }
}
