// The column arrays of a commit as statement parameters. Why a hand-written encoder: text array parameters cost the
// broker per element — pg's own array serialiser (what the GPS columns went through) quotes and regex-escapes every
// element, and even the joined literals of numericArrayLiteral print every number to decimal — and the server then
// parses each one back. For a PostgreSQL server the arrays therefore go as BINARY array parameters (node-postgres sends
// a Buffer with format code 1): 8 bytes written per float8, none parsed. Measured with bench/compare.ts (1,000 mTLS
// trackers, saturation; together with the closure change in ingest.ts): broker CPU per message 92–108 µs before,
// 84–85 µs after. The embedded store (PGlite) takes the same bytes: it binds a Uint8Array parameter as format 1, and
// there it was the server side that counted — parsing the literals was ~40 % of a 20,000-row INSERT.
//
// PostgreSQL's binary array format (array_recv): int32 ndim, int32 flags (1: has nulls), int32 element type oid, per
// dimension int32 length and int32 lower bound, then per element int32 byte length (-1: NULL) and the element's
// binary form (big-endian). The server refuses an array whose element oid is not the parameter's element type, so a
// wrong encoder fails loudly rather than storing wrong values.

/** One array parameter per column type the commit statements use (commit-rows.ts: the casts in their unnest()). */
export interface ArrayParams {
  float8(xs: readonly number[]): unknown
  /** nullable float4 (a GPS fix's altitude and accuracy) */
  float4(xs: readonly (number | null)[]): unknown
  int2(xs: readonly number[]): unknown
  int4(xs: readonly number[]): unknown
  int8(xs: readonly number[]): unknown
  bool(xs: readonly boolean[]): unknown
}

/**
 * A PostgreSQL array literal of validated finite numbers. pg's own serializer quotes and regex-escapes every element
 * (two replaces each, 100k+ per flush at race-day rates); numbers need neither, and JS prints the shortest
 * round-trip form, which float8 parses back exactly.
 */
export function numericArrayLiteral(xs: readonly (number | null)[]): string {
  // Array#join is native and several times faster than building the string element by element.
  const body = xs.includes(null) ? xs.map((x) => (x === null ? 'NULL' : x)).join(',') : xs.join(',')
  return `{${body}}`
}

/** The text literals: the reference the binary encoding is tested against (both stores take the binary one). */
export const textArrays: ArrayParams = {
  float8: numericArrayLiteral,
  float4: numericArrayLiteral,
  int2: numericArrayLiteral,
  int4: numericArrayLiteral,
  int8: numericArrayLiteral,
  bool: (xs) => `{${xs.join(',')}}`,
}

const OID = { bool: 16, int8: 20, int2: 21, int4: 23, float4: 700, float8: 701 } as const

/** header of a one-dimensional array (ndim 0 for an empty one, as array_send writes it) and a view to fill the rest */
function start(n: number, elemBytes: number, oid: number, nulls: boolean): { buf: Buffer; dv: DataView; off: number } {
  const head = n === 0 ? 12 : 20
  const buf = Buffer.allocUnsafe(head + n * (4 + elemBytes))
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  dv.setInt32(0, n === 0 ? 0 : 1)
  dv.setInt32(4, nulls ? 1 : 0)
  dv.setInt32(8, oid)
  if (n > 0) {
    dv.setInt32(12, n)
    dv.setInt32(16, 1)
  }
  return { buf, dv, off: head }
}

// The text path makes PostgreSQL refuse a fraction or an out-of-range integer (22P02/22003); the binary one would
// truncate or wrap it silently, so it refuses them here: the flush fails the same way (a statement error, not a
// connectivity one) and no value is stored that the text path would not store.
function checkInt(x: number, min: number, max: number, type: string): void {
  if (!Number.isInteger(x) || x < min || x > max) throw new RangeError(`${x} is not a valid ${type}`)
}

function float8(xs: readonly number[]): Buffer {
  const { buf, dv } = start(xs.length, 8, OID.float8, false)
  let off = 20
  for (let i = 0; i < xs.length; i++) {
    dv.setInt32(off, 8)
    // + 0 turns -0 into 0, as the text path does (JS prints -0 as "0"): both encodings store the same rows.
    dv.setFloat64(off + 4, (xs[i] as number) + 0)
    off += 12
  }
  return buf
}

function float4(xs: readonly (number | null)[]): Buffer {
  const { buf, dv } = start(xs.length, 4, OID.float4, xs.includes(null))
  // NULL elements carry no bytes: the buffer was sized for none being NULL, so trim to what was written.
  let off = 20
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i] as number | null
    if (x === null) {
      dv.setInt32(off, -1)
      off += 4
    } else {
      // setFloat32 rounds to nearest, as PostgreSQL's float8 → float4 conversion does.
      dv.setInt32(off, 4)
      dv.setFloat32(off + 4, x + 0)
      off += 8
    }
  }
  return xs.length === 0 ? buf : buf.subarray(0, off)
}

/** int2[] or int4[]: the same layout, elements of 2 or 4 bytes (range-checked, so a bad value fails the flush). */
function intArray(width: 2 | 4, xs: readonly number[]): Buffer {
  const [oid, min, max, name] =
    width === 2 ? [OID.int2, -32768, 32767, 'int2'] : [OID.int4, -2147483648, 2147483647, 'int4']
  const { buf, dv } = start(xs.length, width, oid, false)
  let off = 20
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i] as number
    checkInt(x, min, max, name)
    dv.setInt32(off, width)
    if (width === 2) dv.setInt16(off + 4, x)
    else dv.setInt32(off + 4, x)
    off += 4 + width
  }
  return buf
}

const int2 = (xs: readonly number[]) => intArray(2, xs)
const int4 = (xs: readonly number[]) => intArray(4, xs)

const TWO_32 = 2 ** 32

function int8(xs: readonly number[]): Buffer {
  const { buf, dv } = start(xs.length, 8, OID.int8, false)
  let off = 20
  for (let i = 0; i < xs.length; i++) {
    const x = xs[i] as number
    // JS numbers are exact integers up to 2^53 only; beyond that the text path would print a rounded value too.
    checkInt(x, Number.MIN_SAFE_INTEGER, Number.MAX_SAFE_INTEGER, 'int8')
    const hi = Math.floor(x / TWO_32)
    dv.setInt32(off, 8)
    dv.setInt32(off + 4, hi)
    dv.setUint32(off + 8, x - hi * TWO_32)
    off += 12
  }
  return buf
}

function bool(xs: readonly boolean[]): Buffer {
  const { buf, dv } = start(xs.length, 1, OID.bool, false)
  let off = 20
  for (let i = 0; i < xs.length; i++) {
    dv.setInt32(off, 1)
    dv.setUint8(off + 4, xs[i] ? 1 : 0)
    off += 5
  }
  return buf
}

/** Binary array parameters (a PostgreSQL server through node-postgres). */
export const binaryArrays: ArrayParams = { float8, float4, int2, int4, int8, bool }
