// A CPU profile of this thread over a measured window only (not setup, ramp or verification), written in Chrome
// DevTools' format. bench/ingest.ts and bench/compare.ts (`--cpu-profile FILE`) use it.
import fs from 'node:fs'
import { Session } from 'node:inspector/promises'

/** Starts sampling (every 200 µs); the returned function stops it and writes the profile to `file`. */
export async function startCpuProfile(file: string): Promise<() => Promise<void>> {
  const session = new Session()
  session.connect()
  await session.post('Profiler.enable')
  await session.post('Profiler.setSamplingInterval', { interval: 200 })
  await session.post('Profiler.start')
  return async () => {
    const { profile } = await session.post('Profiler.stop')
    fs.writeFileSync(file, JSON.stringify(profile))
    session.disconnect()
  }
}
