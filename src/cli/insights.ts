// `pulsegate insights run`: evaluate the recommendation rules now (docs/insights.md, "Recommendations"). Through a
// running broker (the one owning the embedded store, or --broker) recommendations are published live; offline they
// are stored, and apps get them by delta sync.
import { type Command, InvalidArgumentError } from 'commander'
import { loadConfig } from '../../broker.config.js'
import { RULE_IDS } from '../insights/payload.js'
import { isValidId } from '../topics/grammar.js'
import { withOps } from './ops.js'

function userArg(value: string): string {
  if (!isValidId(value)) throw new InvalidArgumentError('use 1–64 of [A-Za-z0-9_-]')
  return value
}

function ruleArg(value: string): string {
  if (!(RULE_IDS as readonly string[]).includes(value)) throw new InvalidArgumentError(`one of ${RULE_IDS.join(', ')}`)
  return value
}

function atArg(value: string): string {
  const t = Date.parse(value)
  if (!/^\d{4}-\d\d-\d\dT/.test(value) || Number.isNaN(t))
    throw new InvalidArgumentError('an ISO 8601 date-time with an offset, e.g. 2026-03-30T07:45:00+02:00')
  return new Date(t).toISOString()
}

function brokerArg(value: string): string {
  if (!/^https?:\/\/[^/\s]+/.test(value)) throw new InvalidArgumentError('an http(s)://host:port address')
  return value
}

export function addInsightsCommands(program: Command): void {
  const insights = program
    .command('insights')
    .description('personalised recommendations (rules, budget, quiet hours; docs/insights.md)')
  insights
    .command('run')
    .description(
      'evaluate the rules now for users with the recommendations consent and deliver what passes the budget, ' +
        'quiet hours, cooldowns and muted rules; prints JSON',
    )
    .option('--user <uid>', 'only this user (default: every user with the recommendations consent)', userArg)
    .option('--rule <id>', `only this rule (${RULE_IDS.join(', ')}); default: all`, ruleArg)
    .option('--at <iso>', 'evaluate as of this instant (default: now)', atArg)
    .option('--broker <url>', "a running broker's HTTP address: run there and publish live", brokerArg)
    .action(async (opts: { user?: string; rule?: string; at?: string; broker?: string }) => {
      const cfg = loadConfig()
      const out = await withOps(
        cfg,
        (op) =>
          op({
            op: 'insightsRun',
            ...(opts.user ? { userId: opts.user } : {}),
            ...(opts.rule ? { rule: opts.rule as (typeof RULE_IDS)[number] } : {}),
            ...(opts.at ? { at: opts.at } : {}),
          }),
        opts.broker ? { brokerUrl: opts.broker } : {},
      )
      console.log(JSON.stringify(out, null, 2))
    })
}
