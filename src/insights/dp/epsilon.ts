// Privacy budgets as exact numbers. ε is never a float inside pulsegate: it is a whole number of micro-ε (10⁻⁶), as
// the ledger's numeric(20,6) columns hold it, and the noise sampler gets it as a reduced fraction num/den. A config
// value such as 0.5 becomes 500000 µε = 1/2; values with more than six decimals are refused, not rounded.

/** ε in units of 10⁻⁶: an integer, exact in a JS number up to 9·10⁹ ε. */
export type MicroEpsilon = number

export const MICRO = 1_000_000

export interface Fraction {
  num: number
  den: number
}

export class EpsilonError extends Error {}

function gcd(a: number, b: number): number {
  while (b !== 0) [a, b] = [b, a % b]
  return a
}

/** A reduced fraction; both parts must be positive safe integers. */
export function fraction(num: number, den: number): Fraction {
  if (!Number.isSafeInteger(num) || !Number.isSafeInteger(den) || num <= 0 || den <= 0)
    throw new EpsilonError(`not a positive fraction: ${num}/${den}`)
  const g = gcd(num, den)
  return { num: num / g, den: den / g }
}

/**
 * Parses a positive decimal ε ("0.5", "1", 0.25) into micro-ε. Goes through the decimal text, so 0.1 is exactly
 * 100000 µε and not 0.1000000000000000055….
 */
export function parseEpsilon(value: number | string, what = 'epsilon'): MicroEpsilon {
  const text = typeof value === 'number' ? String(value) : value.trim()
  const m = /^(\d+)(?:\.(\d{1,6}))?$/.exec(text)
  if (!m)
    throw new EpsilonError(`${what} must be a positive decimal with at most 6 decimals, got ${JSON.stringify(text)}`)
  const micro = Number(m[1]) * MICRO + Number((m[2] ?? '').padEnd(6, '0'))
  if (!Number.isSafeInteger(micro) || micro <= 0) throw new EpsilonError(`${what} must be > 0, got ${text}`)
  return micro
}

/** Micro-ε as the decimal text PostgreSQL's numeric takes and returns ("0.500000" parses back too). */
export function formatEpsilon(micro: MicroEpsilon): string {
  const sign = micro < 0 ? '-' : ''
  const a = Math.abs(micro)
  const frac = String(a % MICRO)
    .padStart(6, '0')
    .replace(/0+$/, '')
  return `${sign}${Math.floor(a / MICRO)}${frac ? `.${frac}` : ''}`
}

/** numeric text from the database ("9.500000", "0", "-1.25") → micro-ε. */
export function parseNumeric(text: string): MicroEpsilon {
  const m = /^(-?)(\d+)(?:\.(\d+))?$/.exec(text.trim())
  if (!m) throw new EpsilonError(`not a numeric value: ${JSON.stringify(text)}`)
  const frac = (m[3] ?? '').padEnd(6, '0')
  if (/[1-9]/.test(frac.slice(6))) throw new EpsilonError(`more than 6 decimals: ${text}`)
  const v = Number(m[2]) * MICRO + Number(frac.slice(0, 6))
  return m[1] === '-' ? -v : v
}

/** For JSON messages: the decimal value as a number (0.5, 9.5); exact for display, never used in arithmetic. */
export function epsilonNumber(micro: MicroEpsilon): number {
  return Number(formatEpsilon(micro))
}

/** ε/parts as a reduced fraction: the share of one histogram when a release's ε is split evenly among `parts`. */
export function share(micro: MicroEpsilon, parts: number): Fraction {
  return fraction(micro, MICRO * parts)
}
