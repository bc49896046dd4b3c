// Reading a request body with a size bound, for the admin RPC and the console's API: a client that sends more than
// `max` bytes is refused (the caller answers 413/400), never buffered.
import type http from 'node:http'

export async function readBody(req: http.IncomingMessage, max = 64 * 1024): Promise<string> {
  let size = 0
  const chunks: Buffer[] = []
  for await (const chunk of req) {
    size += (chunk as Buffer).length
    if (size > max) throw new Error('body too large')
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}
