// A runnable example of `pulsegate/client`: prints the user's alerts and live snapshots as they come, after a delta
// sync of everything since the last run (the cursor is kept in a file).
//   TOKEN=$(npx pulsegate token alice --role app --ttl 1h)
//   node dist/src/client/example.js ws://localhost:8080/mqtt alice "$TOKEN" [cursor file]
import fs from 'node:fs'
import { connectPulsegate, type PulsegateClient, type SyncCursor } from './index.js'

async function main(): Promise<void> {
  const [url = 'ws://localhost:8080/mqtt', userId, token, cursorArg] = process.argv.slice(2)
  if (!userId || !token) {
    console.error(
      'usage: example <ws url> <userId> <token> [cursor file]   (token: pulsegate token <userId> --role app)',
    )
    process.exitCode = 2
    return
  }
  let client: PulsegateClient | undefined
  // Installed before anything else: a Ctrl-C at any point (even right after the "synced" line) closes and exits 0.
  process.on('SIGINT', () => {
    void (client?.close() ?? Promise.resolve()).then(
      () => process.exit(0),
      () => process.exit(1),
    )
  })
  client = await connectPulsegate({
    url,
    userId,
    token,
    onInvalid: (topic, err) => console.error(`unexpected payload on ${topic}: ${err.message}`),
  })
  await client.onAlert((a) => console.log(`alert ${a.state}: ${a.kind} (${a.severity}) at ${new Date(a.openedAt)}`))
  await client.onLive((l) => console.log(`live: hr ${l.hr ?? '–'}, zone ${l.zone ?? '–'}, ${l.distanceM} m`))
  await client.onRecommendation((r) => console.log(`recommendation: ${r.title}: ${r.message}`))

  const cursorFile = cursorArg ?? `.pulsegate-cursor-${userId}.json`
  // No file yet: from the beginning, in commit order (the client's default), so late uploads are never missed.
  const cursor = fs.existsSync(cursorFile) ? (JSON.parse(fs.readFileSync(cursorFile, 'utf8')) as SyncCursor) : undefined
  const synced = await client.sync({
    ...(cursor !== undefined ? { cursor } : {}),
    kinds: ['readings', 'alerts', 'recommendations'],
  })
  // kept before it is announced: whoever reads the line may stop us at once
  fs.writeFileSync(cursorFile, JSON.stringify(synced.cursor))
  console.log(
    `synced ${synced.readings.length} readings, ${synced.alerts.length} alerts, ` +
      `${synced.recommendations.length} recommendations in ${synced.pages} page(s)`,
  )
}

main().catch((err: Error) => {
  console.error(err.message)
  process.exitCode = 1
})
