// `pulsegate webhooks dead-letters` and `pulsegate webhooks retry`: the push deliveries that gave up
// (docs/outputs.md "Webhooks"). They read the configured database directly (a server database, or the embedded one
// while no broker holds it); a running broker also exports the count as pulsegate_webhook_dead_letters.
import { type Command, InvalidArgumentError } from 'commander'
import { loadConfig } from '../../broker.config.js'
import { listDeadLetters, retryDeadLetters } from '../outputs/webhook/store.js'
import { UsageError } from './errors.js'
import { withStore } from './ops.js'

function limitArg(value: string): number {
  const n = Number(value)
  if (!Number.isInteger(n) || n < 1 || n > 10_000) throw new InvalidArgumentError('an integer 1–10000')
  return n
}

function idArg(value: string, previous: string[] = []): string[] {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(value))
    throw new InvalidArgumentError('a delivery id (uuid)')
  return [...previous, value]
}

export function addWebhookCommands(program: Command): void {
  const webhooks = program.command('webhooks').description('push deliveries to offline apps (docs/outputs.md)')
  webhooks
    .command('dead-letters')
    .description('the dead-lettered deliveries, newest first, and their total; prints JSON (no bodies)')
    .option('--limit <n>', 'at most this many rows (default 100)', limitArg)
    .action(async (opts: { limit?: number }) => {
      const out = await withStore(loadConfig(), (db) => listDeadLetters(db, opts.limit ?? 100))
      console.log(JSON.stringify(out, null, 2))
    })
  webhooks
    .command('retry')
    .description('put dead letters back in the queue with a fresh attempt budget (a running broker sends them)')
    .option('--id <uuid>', 'this delivery (repeatable)', idArg)
    .option('--all', 'every dead letter')
    .action(async (opts: { id?: string[]; all?: boolean }) => {
      if (!opts.all && !opts.id?.length) throw new UsageError('name --id <uuid> or --all')
      const n = await withStore(loadConfig(), (db) => retryDeadLetters(db, opts.all ? 'all' : (opts.id ?? [])))
      console.log(JSON.stringify({ requeued: n }))
    })
}
