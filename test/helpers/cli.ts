// Runs the pulsegate CLI in this process (its main(), as `pulsegate …` would) and captures what it prints.
import { vi } from 'vitest'
import { main } from '../../src/cli/main.js'

export async function runCli(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out: string[] = []
  const err: string[] = []
  const log = vi.spyOn(console, 'log').mockImplementation((...a: unknown[]) => void out.push(a.join(' ')))
  const error = vi.spyOn(console, 'error').mockImplementation((...a: unknown[]) => void err.push(a.join(' ')))
  try {
    const code = await main(['node', 'pulsegate', ...args])
    return { code, out: out.join('\n'), err: err.join('\n') }
  } finally {
    log.mockRestore()
    error.mockRestore()
  }
}
