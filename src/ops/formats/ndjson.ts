// NDJSON read as a stream, line by line, with a cap on a line's length: a file without newlines must not make the
// reader buffer all of it.
import { StringDecoder } from 'node:string_decoder'

/** Longest line read; an Open mHealth data point is a few hundred bytes. */
export const MAX_LINE_CHARS = 1024 * 1024

/** The non-blank lines of a byte stream (UTF-8, LF or CRLF); a line over `maxChars` comes out as null. */
export async function* lines(
  input: AsyncIterable<Buffer | string>,
  maxChars = MAX_LINE_CHARS,
): AsyncGenerator<string | null> {
  const decoder = new StringDecoder('utf8')
  let rest = ''
  let skipping = false // inside a line already reported as too long
  let first = true
  const emit = function* (line: string): Generator<string | null> {
    let l = line.endsWith('\r') ? line.slice(0, -1) : line
    if (first) {
      first = false
      if (l.charCodeAt(0) === 0xfeff) l = l.slice(1) // a byte order mark some editors write
    }
    if (l.trim().length > 0) yield l
  }
  for await (const chunk of input) {
    const text = rest + (typeof chunk === 'string' ? chunk : decoder.write(chunk))
    rest = ''
    let start = 0
    for (let nl = text.indexOf('\n'); nl !== -1; nl = text.indexOf('\n', start)) {
      if (skipping) skipping = false
      else yield* emit(text.slice(start, nl))
      start = nl + 1
    }
    if (skipping) continue
    if (text.length - start > maxChars) {
      skipping = true
      yield null
      continue
    }
    rest = text.slice(start)
  }
  rest += decoder.end()
  if (!skipping) yield* emit(rest)
}
