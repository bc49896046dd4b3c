// The export bundle: a tar (tar-stream) whose first entry, manifest.json, lists every other file with its rows, size
// and SHA-256. The parts are staged on disk first (see PartFile): tar wants each entry's size up front, and the
// manifest's hashes are known only when every part is written. On import, the bundle's NDJSON readings are read
// straight out of the tar stream.
import fs from 'node:fs'
import type { Readable } from 'node:stream'
import tar from 'tar-stream'
import type { PartInfo, TextSink } from '../sink.js'
import type { SchemaId } from './omh.js'

export const BUNDLE_FORMAT = 'pulsegate-export'
export const BUNDLE_FORMAT_VERSION = 1
/** the bundle's readings in Open mHealth NDJSON, one file per metric: what an import of a bundle reads */
export const READINGS_DIR = 'ndjson/'

export interface Manifest {
  format: typeof BUNDLE_FORMAT
  format_version: number
  generated_at: string
  /** the pseudonymous user id (the only identifier a bundle carries) */
  user_id: string
  time_range: { from: string | null; to: string | null }
  devices: string[]
  schemas: { ndjson: SchemaId[]; gpx: '1.1'; csv: 'RFC 4180' }
  files: (PartInfo & { media_type: string })[]
}

export function mediaType(name: string): string {
  if (name.endsWith('.ndjson')) return 'application/x-ndjson'
  if (name.endsWith('.csv')) return 'text/csv'
  if (name.endsWith('.gpx')) return 'application/gpx+xml'
  return 'application/json'
}

export interface StagedPart {
  info: PartInfo
  path: string
}

/** Adds one entry, from a buffer or a file streamed with the entry's backpressure (tar-stream's are streamx streams). */
function addEntry(
  pack: tar.Pack,
  header: Partial<tar.Header> & { name: string },
  source: Buffer | string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const onClose = () => reject(new Error('bundle stream closed'))
    pack.once('close', onClose)
    const done = (err?: Error | null) => {
      pack.off('close', onClose)
      if (err) reject(err)
      else resolve()
    }
    if (typeof source !== 'string') {
      pack.entry(header, source, done)
      return
    }
    const entry = pack.entry(header, done)
    void (async () => {
      for await (const chunk of fs.createReadStream(source)) {
        if (entry.destroyed) break // the bundle was abandoned (the reader went away): stop reading the part
        if (!entry.write(chunk as Buffer)) {
          await new Promise<void>((r) => {
            const done = () => {
              entry.off('drain', done)
              entry.off('close', done)
              r()
            }
            entry.on('drain', done)
            entry.on('close', done)
          })
        }
      }
      if (!entry.destroyed) entry.end(undefined)
    })().catch(reject)
  })
}

/** Writes the tar (manifest first, then the staged parts in order) into `sink`, with its backpressure. */
export async function writeBundle(sink: TextSink, manifest: Manifest, parts: readonly StagedPart[]): Promise<void> {
  const pack = tar.pack()
  const mtime = new Date(manifest.generated_at)
  const pump = (async () => {
    for await (const chunk of pack) await sink.write(chunk as Buffer)
  })()
  // A failed sink (the client went away) must stop the producer too, or it would wait for reads forever.
  pump.catch((err: Error) => pack.destroy(err))
  try {
    const json = Buffer.from(`${JSON.stringify(manifest, null, 2)}\n`, 'utf8')
    await addEntry(pack, { name: 'manifest.json', size: json.length, mtime, mode: 0o644 }, json)
    for (const p of parts) {
      await addEntry(pack, { name: p.info.name, size: p.info.bytes, mtime, mode: 0o644 }, p.path)
    }
    pack.finalize()
  } catch (err) {
    pack.destroy(err as Error)
  }
  await pump
}

/**
 * The entries of a bundle (or any tar) one at a time; the caller reads each stream to its end before asking for the
 * next (tar is sequential). Entries the caller leaves unread are skipped.
 */
export async function* tarEntries(input: Readable): AsyncGenerator<{ name: string; stream: AsyncIterable<Buffer> }> {
  const extract = tar.extract()
  input.once('error', (err) => extract.destroy(err))
  input.pipe(extract)
  for await (const entry of extract) {
    if (entry.header.type === 'file' || entry.header.type === undefined) {
      yield { name: entry.header.name, stream: entry as AsyncIterable<unknown> as AsyncIterable<Buffer> }
    }
    entry.resume()
  }
}
