// Child process of bench/sse.ts: opens `clients` SSE streams to one broker (plain node:http, one socket each, so the
// broker's file descriptors and this process's are separate budgets), and records for every update it receives the
// latency from the server timestamp in the payload (`t`) to its arrival here. Same machine, same clock.
import http from 'node:http'
import { encodeHistogram, latencyHistogram } from './stats.js'

interface Init {
  type: 'init'
  port: number
  path: string
  clients: number
  concurrency: number
}
interface Await {
  type: 'await'
  seq: number
  timeoutMs: number
}

const hist = latencyHistogram()
const lastSeq: number[] = []
let failed = 0
let closed = 0
let errors: string[] = []
let waiter: { seq: number; resolve: () => void } | null = null
let caughtUp = 0

const SEQ_RE = /"seq":(\d+)/
const T_RE = /"t":(\d+)/

function onEvent(i: number, block: string): void {
  const data = block.split('\n').find((l) => l.startsWith('data:'))
  if (!data) return
  const seq = Number(SEQ_RE.exec(data)?.[1] ?? -1)
  const t = Number(T_RE.exec(data)?.[1] ?? 0)
  const prev = lastSeq[i] ?? -1
  if (seq <= prev) return
  lastSeq[i] = seq
  // seq 0 is the state the stream starts with (published before anyone connected): no latency to speak of.
  if (seq > 0 && t > 0) hist.recordValue(Math.max(1, (Date.now() - t) * 1000))
  if (waiter && prev < waiter.seq && seq >= waiter.seq) {
    caughtUp++
    if (caughtUp >= lastSeq.length - failed - closed) waiter.resolve()
  }
}

function open(init: Init, i: number): Promise<void> {
  return new Promise((resolve) => {
    lastSeq[i] = -1
    const req = http.get(
      { host: '127.0.0.1', port: init.port, path: init.path, agent: false, headers: { accept: 'text/event-stream' } },
      (res) => {
        if (res.statusCode !== 200) {
          failed++
          if (errors.length < 5) errors.push(`HTTP ${res.statusCode}`)
          res.resume()
          return resolve()
        }
        res.setEncoding('utf8')
        let buf = ''
        let first = true
        res.on('data', (chunk: string) => {
          buf += chunk
          let end = buf.indexOf('\n\n')
          while (end >= 0) {
            onEvent(i, buf.slice(0, end))
            buf = buf.slice(end + 2)
            end = buf.indexOf('\n\n')
          }
          // Connected once the starting state is here.
          if (first && (lastSeq[i] ?? -1) >= 0) {
            first = false
            resolve()
          }
        })
        res.on('close', () => {
          closed++
          resolve()
        })
      },
    )
    req.on('error', (err) => {
      failed++
      if (errors.length < 5) errors.push(err.message)
      resolve()
    })
  })
}

process.on('message', (m: Init | Await) => {
  if (m.type === 'init') {
    void (async () => {
      const started = performance.now()
      let next = 0
      const lane = async () => {
        while (next < m.clients) await open(m, next++)
      }
      await Promise.all(Array.from({ length: m.concurrency }, lane))
      process.send?.({ type: 'connected', ok: m.clients - failed, failed, errors, ms: performance.now() - started })
      errors = []
    })()
  } else {
    caughtUp = lastSeq.filter((s) => s >= m.seq).length
    const done = () => {
      process.send?.({
        type: 'done',
        histogram: encodeHistogram(hist),
        caughtUp,
        open: lastSeq.length - failed - closed,
        closed,
      })
    }
    if (caughtUp >= lastSeq.length - failed - closed) return done()
    const timer = setTimeout(done, m.timeoutMs)
    waiter = {
      seq: m.seq,
      resolve: () => {
        clearTimeout(timer)
        waiter = null
        done()
      },
    }
  }
})
