// `pulsegate users add | consent | consents | erase`: pseudonymous people, their consent and their erasure, offline
// (against the store) and live (a running broker's admin RPC), like every registry command (src/cli/ops.ts).
import readline from 'node:readline/promises'
import { type Command, Option } from 'commander'
import type { BrokerConfig } from '../../broker.config.js'
import type { ConsentRecord, ConsentState, Purpose } from '../ops/consent.js'
import type { ErasureReport } from '../ops/erase.js'
import { PURPOSES } from '../ops/consent.js'
import { normalizeTimeZone, PeopleError } from '../ops/people.js'
import type { AddedUser } from '../ops/privacy-services.js'
import { checkExternalId, ExternalIdError } from '../ops/pseudonym.js'
import { withOps } from './ops.js'

/** What main.ts shares with its command modules. */
export interface CliKit {
  config(): BrokerConfig
  requireId(kind: string, value: string): string
  usage(message: string): Error
}

/** Asks on the terminal; true only when the answer is the user id itself. */
async function confirmErasure(userId: string): Promise<boolean> {
  const rl = readline.createInterface({ input: process.stdin, output: process.stderr })
  try {
    const answer = await rl.question(
      `Erase every trace of user ${userId} (readings, alerts, consents, devices, sessions)? This cannot be undone.\nType the user id to confirm: `,
    )
    return answer.trim() === userId
  } finally {
    rl.close()
  }
}

function formatState(state: ConsentState): string {
  return PURPOSES.map((p) => {
    const s = state[p]
    const what = s.version === 0 ? 'not set' : `${s.granted ? 'on' : 'off'}  v${s.version}  ${s.at}  ${s.source}`
    return `  ${p.padEnd(16)}${what}`
  }).join('\n')
}

function formatHistory(history: readonly ConsentRecord[]): string {
  if (history.length === 0) return '  (none)'
  return history
    .map((h) => {
      const scope = h.eventId ? `${h.purpose}@${h.eventId}` : h.purpose
      return `  ${h.at}  ${scope.padEnd(28)}${h.granted ? 'on ' : 'off'}  v${h.version}  ${h.source}`
    })
    .join('\n')
}

export function addUserCommands(users: Command, kit: CliKit): void {
  users
    .command('add')
    .description(
      'derive the pseudonymous user id of an external account id (keyed HMAC) and create or update the user; prints the id. Names and e-mails are stored encrypted; the external id is never stored',
    )
    .requiredOption('--external <accountId>', "the app backend's account id or e-mail (case-sensitive)")
    .option('--birth-year <year>', 'year of birth (predicted max HR)')
    .option('--name <name>', 'display name (stored encrypted, in `people` only)')
    .option('--email <email>', 'e-mail (stored encrypted, in `people` only)')
    .option('--time-zone <iana>', 'IANA time zone, e.g. Europe/Berlin (default UTC)')
    .action(
      async (opts: { external: string; birthYear?: string; name?: string; email?: string; timeZone?: string }) => {
        const cfg = kit.config()
        try {
          checkExternalId(opts.external)
        } catch (err) {
          if (err instanceof ExternalIdError) throw kit.usage(`--external: ${err.message}`)
          throw err
        }
        const birthYear = opts.birthYear !== undefined ? Number(opts.birthYear) : undefined
        if (birthYear !== undefined && !(Number.isInteger(birthYear) && birthYear >= 1900 && birthYear <= 2100))
          throw kit.usage('--birth-year must be a year between 1900 and 2100')
        let timeZone: string | undefined
        try {
          timeZone = opts.timeZone !== undefined ? normalizeTimeZone(opts.timeZone) : undefined
        } catch (err) {
          if (err instanceof PeopleError) throw kit.usage(`--time-zone: ${err.message}`)
          throw err
        }
        for (const [flag, v] of [
          ['--name', opts.name],
          ['--email', opts.email],
        ] as const)
          if (v !== undefined && v.length === 0) throw kit.usage(`${flag} must not be empty`)
        const res = (await withOps(cfg, (op) =>
          op({
            op: 'addUser',
            externalId: opts.external,
            ...(birthYear !== undefined ? { birthYear } : {}),
            ...(opts.name !== undefined ? { name: opts.name } : {}),
            ...(opts.email !== undefined ? { email: opts.email } : {}),
            ...(timeZone !== undefined ? { timeZone } : {}),
          }),
        )) as AddedUser
        // The id alone on stdout, for scripts: UID=$(pulsegate users add --external …)
        console.log(res.userId)
      },
    )

  users
    .command('consent <userId> <purpose> <onOff>')
    .description(`grant (on) or withdraw (off) a consent; purposes: ${PURPOSES.join(', ')}`)
    .action(async (userIdArg: string, purposeArg: string, onOff: string) => {
      const cfg = kit.config()
      const userId = kit.requireId('user id', userIdArg)
      if (!(PURPOSES as readonly string[]).includes(purposeArg))
        throw kit.usage(`unknown purpose ${JSON.stringify(purposeArg)} (known: ${PURPOSES.join(', ')})`)
      if (onOff !== 'on' && onOff !== 'off') throw kit.usage(`say on or off, not ${JSON.stringify(onOff)}`)
      const purpose = purposeArg as Purpose
      const res = (await withOps(cfg, (op) => op({ op: 'setConsent', userId, purpose, granted: onOff === 'on' }))) as {
        state: ConsentState
      }
      const s = res.state[purpose]
      console.log(`${userId} ${purpose}: ${s.granted ? 'on' : 'off'} (version ${s.version})`)
    })

  users
    .command('consents <userId>')
    .description('show the current consent per purpose and the full history')
    .addOption(new Option('--json', 'print {state, history} as JSON'))
    .action(async (userIdArg: string, opts: { json?: boolean }) => {
      const cfg = kit.config()
      const userId = kit.requireId('user id', userIdArg)
      const res = (await withOps(cfg, (op) => op({ op: 'getConsent', userId }))) as {
        state: ConsentState
        history: ConsentRecord[]
      }
      if (opts.json) {
        console.log(JSON.stringify(res, null, 2))
        return
      }
      console.log(`consent of ${userId}:\n${formatState(res.state)}\nhistory:\n${formatHistory(res.history)}`)
    })

  users
    .command('erase <userId>')
    .description(
      'erase every trace of a user (docs/privacy.md "Erasure"): telemetry, rollups, alerts, consents (one tombstone), devices (certificates refused), sessions, leaderboard entries, retained messages; prints the counts per table as JSON',
    )
    .option('--yes', 'do not ask for confirmation (nothing is asked without a terminal either)')
    .option('--broker <url>', "a running broker's HTTP address (http://host:8080): erase through it, live")
    .action(async (userIdArg: string, opts: { yes?: boolean; broker?: string }) => {
      const cfg = kit.config()
      const userId = kit.requireId('user id', userIdArg)
      if (opts.broker !== undefined && !/^https?:\/\/[^/\s]+\/?$/.test(opts.broker))
        throw kit.usage(`--broker must be an http(s)://host:port address, not ${JSON.stringify(opts.broker)}`)
      if (!opts.yes && process.stdin.isTTY && process.stderr.isTTY && !(await confirmErasure(userId)))
        throw new Error('not confirmed: nothing was erased')
      const report = (await withOps(cfg, (op) => op({ op: 'eraseUser', userId }), {
        ...(opts.broker ? { brokerUrl: opts.broker } : {}),
      })) as ErasureReport
      console.log(JSON.stringify(report, null, 2))
      for (const w of report.warnings) console.error(`pulsegate: note: ${w}`)
    })
}
