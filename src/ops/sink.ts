// Writing text to a Node Writable with backpressure: every write waits for 'drain' when the stream's buffer is full,
// so an export holds at most one page in memory however slow the reader (a file, a pipe, an HTTP client) is.
import crypto from 'node:crypto'
import fs from 'node:fs'
import type { Writable } from 'node:stream'

/** Resolves when `out` can take more; rejects when it errors or closes first (a client that went away). */
function drained(out: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      out.off('drain', onDrain)
      out.off('error', onError)
      out.off('close', onClose)
      if (err) reject(err)
      else resolve()
    }
    const onDrain = () => done()
    const onError = (err: Error) => done(err)
    const onClose = () => done(new Error('output closed before the export finished'))
    out.on('drain', onDrain)
    out.on('error', onError)
    out.on('close', onClose)
  })
}

export class TextSink {
  bytes = 0
  private readonly hash: crypto.Hash | null

  constructor(
    readonly out: Writable,
    opts: { sha256?: boolean } = {},
  ) {
    this.hash = opts.sha256 ? crypto.createHash('sha256') : null
  }

  async write(data: string | Buffer): Promise<void> {
    if (data.length === 0) return
    if (this.out.destroyed || this.out.writableEnded) throw new Error('output closed before the export finished')
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data
    this.bytes += buf.length
    this.hash?.update(buf)
    if (!this.out.write(buf)) await drained(this.out)
  }

  sha256(): string {
    if (!this.hash) throw new Error('this sink does not hash')
    return this.hash.digest('hex')
  }
}

/** What the bundle's manifest says about one file. */
export interface PartInfo {
  name: string
  rows: number
  bytes: number
  sha256: string
}

/**
 * One file of a bundle, staged on disk while it is written and hashed: tar needs each entry's size before its bytes,
 * and keeping the part in memory would make a 10M-row export need gigabytes. Disk, not RAM.
 */
export class PartFile {
  rows = 0
  private readonly sink: TextSink

  constructor(
    readonly name: string,
    readonly path: string,
  ) {
    this.sink = new TextSink(fs.createWriteStream(path), { sha256: true })
  }

  write(text: string): Promise<void> {
    return this.sink.write(text)
  }

  async close(): Promise<PartInfo> {
    const out = this.sink.out
    await new Promise<void>((resolve, reject) => {
      out.once('error', reject)
      out.end(() => resolve())
    })
    return { name: this.name, rows: this.rows, bytes: this.sink.bytes, sha256: this.sink.sha256() }
  }
}
