// Starts alerts-load.ts on its own thread (N trackers publishing ordinary batches each second), for the benches that
// measure a latency under traffic (bench/alerts.ts, bench/webhook.ts).
import { Worker } from 'node:worker_threads'

export interface BackgroundLoad {
  /** resolves when every tracker is connected */
  connected: Promise<void>
  /** resolves at the end of the load's `seconds`, with the batches acked and failed */
  done: Promise<{ acked: number; failed: number }>
  stop(): Promise<number>
}

export function startBackgroundLoad(init: {
  url: string
  ca: string
  devices: { deviceId: string; certPath: string; keyPath: string }[]
  seconds: number
}): BackgroundLoad {
  const load = new Worker(new URL('./alerts-load.js', import.meta.url), { workerData: init })
  const done = new Promise<{ acked: number; failed: number }>((resolve) =>
    load.on('message', (m: { type: string; acked: number; failed: number }) => m.type === 'done' && resolve(m)),
  )
  const connected = new Promise<void>((resolve) =>
    load.on('message', (m: { type: string }) => m.type === 'connected' && resolve()),
  )
  return { connected, done, stop: () => load.terminate() }
}
