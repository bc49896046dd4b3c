// Command-line helpers the bench scripts share: --help prints the script's header comment (its documentation),
// and bad arguments end the run with exit code 2 and one line saying what is wrong.
import fs from 'node:fs'

/** Prints the `//` header of the script at `scriptUrl` (pass import.meta.url) and exits 0. */
export function printHeaderAndExit(scriptUrl: string): never {
  console.log(
    fs
      .readFileSync(new URL(scriptUrl), 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('//'))
      .join('\n'),
  )
  process.exit(0)
}

export function usage(msg: string): never {
  console.error(msg)
  process.exit(2)
}

/** An option with a fixed set of values: `--name must be a or b` otherwise. */
export function oneOf<T extends string>(name: string, v: string | undefined, choices: readonly T[]): T {
  if (!choices.includes(v as T)) usage(`--${name} must be ${choices.join(' or ')}`)
  return v as T
}

/** A numeric option, at least `min`. */
export function num(name: string, v: string | undefined, min: number): number {
  const n = Number(v)
  if (!Number.isFinite(n) || n < min) usage(`--${name} must be a number >= ${min} (got ${v})`)
  return n
}
