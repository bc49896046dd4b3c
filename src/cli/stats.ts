// `pulsegate stats event|ledger`: differentially private event statistics for operators. Offline against the
// database, or live through a running broker's /admin/rpc (withOps decides), from the same ε ledger as the broker.
import { type Command, InvalidArgumentError } from 'commander'
import { loadConfig } from '../../broker.config.js'
import { EpsilonError, parseEpsilon } from '../insights/dp/epsilon.js'
import { isValidId } from '../topics/grammar.js'
import { withOps } from './ops.js'

function eventIdArg(value: string): string {
  if (!isValidId(value)) throw new InvalidArgumentError('use 1–64 of [A-Za-z0-9_-]')
  return value
}

function epsilonArg(value: string): string {
  try {
    parseEpsilon(value, '--epsilon')
  } catch (err) {
    if (err instanceof EpsilonError) throw new InvalidArgumentError(err.message)
    throw err
  }
  return value
}

/** Adds `stats` under the program (created from it, so the subcommands inherit its exit and output settings). */
export function addStatsCommands(program: Command): void {
  const stats = program
    .command('stats')
    .description(
      'differentially private event statistics (discrete Laplace noise, per-event ε ledger; docs/insights.md)',
    )
  stats
    .command('event')
    .description(
      "release the event's statistics now and print them as JSON; spends ε from the event's ledger (the same budget " +
        "as the broker's events/{eid}/stats messages) and fails, spending nothing, when the day's budget would be passed",
    )
    .argument('<eventId>', 'event id', eventIdArg)
    .option('--epsilon <e>', 'ε of this release (default: dp.epsilonPerRelease, PULSEGATE_DP_EPSILON)', epsilonArg)
    .option('--dry-run', 'read no data and spend nothing: print the budget left and the cells a release would have')
    .action(async (eventId: string, opts: { epsilon?: string; dryRun?: boolean }) => {
      const cfg = loadConfig()
      const out = await withOps(cfg, (op) =>
        op({
          op: 'dpRelease',
          eventId,
          ...(opts.epsilon !== undefined ? { epsilon: opts.epsilon } : {}),
          ...(opts.dryRun ? { dryRun: true } : {}),
        }),
      )
      console.log(JSON.stringify(out, null, 2))
    })
  stats
    .command('ledger')
    .description("print the event's ε ledger: spent and remaining per UTC day, and the latest releases")
    .argument('<eventId>', 'event id', eventIdArg)
    .action(async (eventId: string) => {
      const cfg = loadConfig()
      const out = await withOps(cfg, (op) => op({ op: 'dpLedger', eventId }))
      console.log(JSON.stringify(out, null, 2))
    })
}
