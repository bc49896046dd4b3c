// Reading Server-Sent Events in tests: a spec-following parser for whatever transport carries the bytes (a spawned
// `curl -N`, a raw socket), and a spawned curl whose events, headers and exit are collected.
import { type ChildProcess, spawn } from 'node:child_process'

export interface SseEvent {
  id: string | null
  event: string
  data: string
}

/** Splits a text/event-stream into events (comments and retry fields skipped). */
export class SseParser {
  private buf = ''
  private id: string | null = null
  private event = ''
  private data: string[] = []
  comments = 0

  feed(text: string): SseEvent[] {
    this.buf += text
    const out: SseEvent[] = []
    let nl = this.buf.indexOf('\n')
    while (nl >= 0) {
      const line = this.buf.slice(0, nl).replace(/\r$/, '')
      this.buf = this.buf.slice(nl + 1)
      if (line === '') {
        if (this.data.length > 0) out.push({ id: this.id, event: this.event || 'message', data: this.data.join('\n') })
        this.event = ''
        this.data = []
      } else if (line.startsWith(':')) this.comments++
      else {
        const i = line.indexOf(':')
        const field = i < 0 ? line : line.slice(0, i)
        const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '')
        if (field === 'data') this.data.push(value)
        else if (field === 'event') this.event = value
        else if (field === 'id') this.id = value
      }
      nl = this.buf.indexOf('\n')
    }
    return out
  }
}

export interface CurlStream {
  proc: ChildProcess
  events: SseEvent[]
  /** the response head (`-i`): status line and headers, lower-cased names */
  status: number | null
  headers: Record<string, string>
  exited: Promise<number | null>
  /** true once curl has exited */
  done: boolean
  parser: SseParser
  stop(): void
}

/** `curl -N -i` on a URL: real curl, unbuffered, with the response head. */
export function curlSse(url: string, headers: Record<string, string> = {}): CurlStream {
  const args = ['-sN', '-i', '--max-time', '120']
  for (const [k, v] of Object.entries(headers)) args.push('-H', `${k}: ${v}`)
  args.push(url)
  const proc = spawn('curl', args, { stdio: ['ignore', 'pipe', 'inherit'] })
  const parser = new SseParser()
  const s: CurlStream = {
    proc,
    events: [],
    status: null,
    headers: {},
    parser,
    done: false,
    exited: new Promise((resolve) =>
      proc.once('exit', (code) => {
        s.done = true
        resolve(code)
      }),
    ),
    stop: () => {
      if (proc.exitCode === null) proc.kill('SIGTERM')
    },
  }
  let head = ''
  let inBody = false
  proc.stdout?.setEncoding('utf8')
  proc.stdout?.on('data', (chunk: string) => {
    let text = chunk
    if (!inBody) {
      head += text
      const end = head.indexOf('\r\n\r\n')
      if (end < 0) return
      inBody = true
      const lines = head.slice(0, end).split('\r\n')
      s.status = Number(lines[0]?.split(' ')[1])
      for (const l of lines.slice(1)) {
        const i = l.indexOf(':')
        if (i > 0) s.headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
      }
      text = head.slice(end + 4)
    }
    s.events.push(...parser.feed(text))
  })
  return s
}
