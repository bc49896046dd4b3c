#!/usr/bin/env node
// `pulsegate` command line. Every command has --help; errors say what was wrong and exit non-zero.
import fs from 'node:fs'
import path from 'node:path'
import { Command, CommanderError, Option } from 'commander'
import { type BrokerConfig, ConfigError, loadConfig } from '../../broker.config.js'
import { startPulsegate } from '../broker.js'
import { initPki, issueDeviceCert, pkiPaths } from '../identity/pki.js'
import type { Role } from '../identity/principal.js'
import { parseTtl, Tokens } from '../identity/tokens.js'
import { createLogger } from '../log.js'
import { openAuditLog } from '../ops/audit.js'
import { isValidId } from '../topics/grammar.js'
import { embeddedOwner, openEmbedded } from '../store/embedded.js'
import { migrate } from '../store/migrate.js'
import { openPostgres } from '../store/postgres.js'
import { simulateCommand } from '../../simulators/cli.js'
import { addAuditCommand } from './audit.js'
import { startBanner } from './banner.js'
import { addContractCommands } from './contract.js'
import { UsageError } from './errors.js'
import { withOps } from './ops.js'
import { addPortabilityCommands } from './portability.js'
import { addInsightsCommands } from './insights.js'
import { addStatsCommands } from './stats.js'
import { addUserCommands } from './users.js'
import { addWebhookCommands } from './webhooks.js'
import { addZoneCommands } from './zones.js'

function config(): BrokerConfig {
  return loadConfig()
}

function requireId(kind: string, value: string): string {
  if (!isValidId(value)) throw new UsageError(`invalid ${kind} ${JSON.stringify(value)}: use 1–64 of [A-Za-z0-9_-]`)
  return value
}

function buildProgram(): Command {
  const program = new Command()
  program
    .name('pulsegate')
    .description(
      'MQTT broker for fitness trackers and wellness apps (configuration: broker.config.ts, env PULSEGATE_*)',
    )
    .showHelpAfterError()
    .exitOverride()

  program
    .command('start')
    .description('start the broker (listeners, ingest, outputs); SIGTERM/SIGINT stop it gracefully')
    .action(async () => {
      const cfg = config()
      const firstStart = !fs.existsSync(pkiPaths(path.join(cfg.dataDir, 'pki')).caCert)
      const pg = await startPulsegate(cfg)
      const pkiMade = firstStart && fs.existsSync(pkiPaths(path.join(cfg.dataDir, 'pki')).caCert)
      let signals = 0
      const onSignal = (sig: string) => {
        signals++
        if (signals > 1) {
          pg.log.warn('second signal: exiting now')
          process.exit(1)
        }
        pg.log.info({ sig }, 'signal received')
        pg.stop().then(
          () => process.exit(0),
          (err: Error) => {
            pg.log.error({ err: err.message }, 'shutdown failed')
            process.exit(1)
          },
        )
      }
      if (cfg.shutdownSignals) {
        process.on('SIGTERM', () => onSignal('SIGTERM'))
        process.on('SIGINT', () => onSignal('SIGINT'))
      }
      // After the handlers: whoever waits for the banner may send a signal at once, and must get a graceful stop.
      console.log(startBanner(cfg, pg.ports, { firstStart: pkiMade, store: pg.db.kind }))
    })

  program
    .command('migrate')
    .description('apply database migrations (also done at start)')
    .action(async () => {
      const cfg = config()
      const log = createLogger(cfg.logLevel, 'pulsegate-cli')
      if (!cfg.databaseUrl && embeddedOwner(cfg.dataDir)) {
        console.log('a running broker owns the embedded database; it migrated it at start')
        return
      }
      const db = cfg.databaseUrl ? openPostgres(cfg.databaseUrl, 1, log) : await openEmbedded(cfg.dataDir, log)
      try {
        const r = await migrate(db, log)
        console.log(
          `migrations: ${r.applied.length} applied, ${r.skipped.length} skipped (TimescaleDB ${r.timescale ? 'on' : 'not available'})`,
        )
      } finally {
        await db.close()
      }
    })

  const pki = program.command('pki').description('development PKI: CA, server and device certificates')
  pki
    .command('init')
    .description('create the CA and server certificate in <data dir>/pki (ECDSA P-256)')
    .option('--host <name...>', 'extra server certificate names (DNS or IP)')
    .option('--force', 'replace an existing PKI (old device certificates stop working)')
    .action(async (opts: { host?: string[]; force?: boolean }) => {
      const cfg = config()
      const dir = path.join(cfg.dataDir, 'pki')
      const created = await initPki(dir, { serverHosts: opts.host ?? [], force: opts.force ?? false })
      const p = pkiPaths(dir)
      console.log(
        created ? `created ${p.caCert}, ${p.serverCert}` : `PKI already present in ${dir} (use --force to replace)`,
      )
    })
  pki
    .command('device <deviceId>')
    .description('issue a device certificate and register the device to its owner')
    .requiredOption('--user <userId>', 'owner (pseudonymous user id)')
    .option('--days <n>', 'validity in days', '825')
    .option('--require-signed', 'refuse readings not signed by the device (COSE_Sign1; docs/device-signing.md)')
    .option('--encrypt', 'provision a content key for encrypted readings (COSE_Encrypt0), written beside the key')
    .action(
      async (deviceIdArg: string, opts: { user: string; days: string; requireSigned?: boolean; encrypt?: boolean }) => {
        const cfg = config()
        const deviceId = requireId('device id', deviceIdArg)
        const userId = requireId('user id', opts.user)
        const days = Number(opts.days)
        if (!Number.isInteger(days) || days < 1) throw new UsageError('--days must be a positive whole number')
        const dir = path.join(cfg.dataDir, 'pki')
        await initPki(dir)
        const issued = await issueDeviceCert(dir, deviceId, { validDays: days })
        const contentKey = await withOps(cfg, async (op) => {
          await op({
            op: 'registerDevice',
            deviceId,
            userId,
            fingerprint: issued.fingerprint256,
            serial: issued.serialNumber,
            notAfter: issued.notAfter.toISOString(),
            // The certificate itself: its key verifies the device's signed readings.
            certPem: issued.certPem,
            ...(opts.requireSigned ? { signedRequired: true } : {}),
          })
          if (!opts.encrypt) return null
          return ((await op({ op: 'provisionContentKey', deviceId })) as { contentKey: string }).contentKey
        })
        const p = pkiPaths(dir)
        // The content key's only copy outside the device record (wrapped there): for the device, mode 0600 like its key.
        const cekPath = path.join(p.devicesDir, `${deviceId}.cek`)
        if (contentKey) fs.writeFileSync(cekPath, `${contentKey}\n`, { mode: 0o600 })
        console.log(`device ${deviceId} registered to ${userId}${opts.requireSigned ? ' (signed readings required)' : ''}
  certificate: ${issued.certPath}
  key:         ${issued.keyPath}${contentKey ? `\n  content key: ${cekPath}` : ''}
  CA:          ${p.caCert}
  try: mosquitto_pub -h localhost -p ${cfg.mqttsPort} --cafile ${p.caCert} --cert ${issued.certPath} --key ${issued.keyPath} -i ${deviceId} -q 1 -t devices/${deviceId}/readings -m '{"seq":1,"samples":[{"t":'$(date +%s000)',"hr":72}]}'`)
      },
    )
  pki
    .command('policy <deviceId>')
    .description("set the device's signed-readings policy (docs/device-signing.md)")
    .addOption(new Option('--require-signed', 'refuse unsigned or badly signed readings').conflicts('allowUnsigned'))
    .addOption(new Option('--allow-unsigned', 'accept plain readings too (signed ones are still verified)'))
    .action(async (deviceIdArg: string, opts: { requireSigned?: boolean; allowUnsigned?: boolean }) => {
      const cfg = config()
      const deviceId = requireId('device id', deviceIdArg)
      if (!opts.requireSigned && !opts.allowUnsigned) throw new UsageError('give --require-signed or --allow-unsigned')
      const signedRequired = opts.requireSigned === true
      await withOps(cfg, (op) => op({ op: 'setDevicePolicy', deviceId, signedRequired }))
      console.log(`${deviceId}: ${signedRequired ? 'signed readings required' : 'unsigned readings accepted'}`)
    })
  pki
    .command('revoke <deviceId>')
    .description("revoke the device's certificate (a connected device is disconnected)")
    .action(async (deviceIdArg: string) => {
      const cfg = config()
      const deviceId = requireId('device id', deviceIdArg)
      const res = (await withOps(cfg, (op) => op({ op: 'revokeDevice', deviceId }))) as { revoked: boolean }
      if (!res.revoked) throw new UsageError(`unknown device ${deviceId}`)
      console.log(`revoked the certificate of ${deviceId}`)
    })

  program
    .command('token <userId>')
    .description('print a signed JWT (HS256 with the configured or dev secret)')
    .addOption(new Option('--role <role>', 'role').choices(['app', 'bridge', 'medic', 'admin']).makeOptionMandatory())
    .option('--events <ids>', 'comma-separated event ids (medics)')
    .option('--ttl <ttl>', 'lifetime, e.g. 30m, 1h, 7d', '1h')
    .action(async (userIdArg: string, opts: { role: Role; events?: string; ttl: string }) => {
      const cfg = config()
      const sub = requireId('user id', userIdArg)
      const events = opts.events ? opts.events.split(',').map((e) => requireId('event id', e.trim())) : undefined
      const ttl = (() => {
        try {
          return parseTtl(opts.ttl)
        } catch (err) {
          throw new UsageError((err as Error).message)
        }
      })()
      const token = await new Tokens(cfg).sign({ sub, role: opts.role, ttl, ...(events ? { events } : {}) })
      console.log(token)
    })

  const event = program.command('event').description('events (races) and their participants')
  event
    .command('create <eventId>')
    .description('create or update an event')
    .option('--name <name>', 'display name')
    .option('--public', 'leaderboard and stats visible to anyone signed in')
    .option('--distance <metres>', 'course length in metres')
    .option('--starts <iso>', 'start time, ISO 8601')
    .action(
      async (eventIdArg: string, opts: { name?: string; public?: boolean; distance?: string; starts?: string }) => {
        const cfg = config()
        const eventId = requireId('event id', eventIdArg)
        const distanceM = opts.distance !== undefined ? Number(opts.distance) : undefined
        if (distanceM !== undefined && !(distanceM > 0))
          throw new UsageError('--distance must be a positive number of metres')
        if (opts.starts && Number.isNaN(Date.parse(opts.starts)))
          throw new UsageError('--starts must be an ISO 8601 time')
        await withOps(cfg, (op) =>
          op({
            op: 'createEvent',
            eventId,
            isPublic: opts.public ?? false,
            ...(opts.name ? { name: opts.name } : {}),
            ...(distanceM ? { distanceM } : {}),
            ...(opts.starts ? { startsAt: opts.starts } : {}),
          }),
        )
        console.log(`event ${eventId} saved`)
      },
    )
  event
    .command('join <eventId> <userId>')
    .description('add a participant; --consent leaderboard puts them on the public leaderboard')
    .option('--consent <purposes>', 'comma-separated consents (leaderboard)')
    .option('--bib <bib>', 'bib number')
    .action(async (eventIdArg: string, userIdArg: string, opts: { consent?: string; bib?: string }) => {
      const cfg = config()
      const eventId = requireId('event id', eventIdArg)
      const userId = requireId('user id', userIdArg)
      const consents = (opts.consent ?? '')
        .split(',')
        .map((c) => c.trim())
        .filter(Boolean)
      for (const c of consents)
        if (c !== 'leaderboard') throw new UsageError(`unknown consent ${JSON.stringify(c)} (known: leaderboard)`)
      await withOps(cfg, (op) =>
        op({
          op: 'joinEvent',
          eventId,
          userId,
          consentLeaderboard: consents.includes('leaderboard'),
          ...(opts.bib ? { bib: opts.bib } : {}),
        }),
      )
      console.log(`${userId} joined ${eventId}${consents.length ? ` (consent: ${consents.join(', ')})` : ''}`)
    })

  const users = program.command('users').description('pseudonymous people, their consent and their data')
  addUserCommands(users, { config, requireId, usage: (m) => new UsageError(m) })
  addZoneCommands(users, { config, requireId, usage: (m) => new UsageError(m) })
  // Offline exports and imports are recorded in the audit log as the CLI's (records are durable once awaited).
  addPortabilityCommands(users, {
    auditFor: (db, cfg) => openAuditLog(db, cfg, createLogger(cfg.logLevel, 'pulsegate-cli')),
  })

  addStatsCommands(program)
  addInsightsCommands(program)
  addWebhookCommands(program)
  program.addCommand(simulateCommand().copyInheritedSettings(program))
  addAuditCommand(program)
  addContractCommands(program)
  return program
}

/** An error as an operator can act on it: a dependency's own wording names the setting to check. */
function operatorMessage(err: Error): string {
  // ioredis gives up on a command after its retries: in cluster mode the start needs Redis.
  if (err.name === 'MaxRetriesPerRequestError')
    return `Redis did not answer (${err.message}); check PULSEGATE_REDIS_URL, or unset it to run one node without Redis`
  return err.message
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram()
  try {
    await program.parseAsync(argv)
    return 0
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : 2
    if (err instanceof ConfigError || err instanceof UsageError) {
      console.error(`pulsegate: ${err.message}`)
      return 2
    }
    console.error(`pulsegate: ${operatorMessage(err as Error)}`)
    return 1
  }
}

// Run when executed directly (bin or `node dist/src/cli/main.js`), not when imported by tests.
const invoked = process.argv[1] ? fs.realpathSync(process.argv[1]) : ''
if (invoked.endsWith(path.join('cli', 'main.js')) || invoked.endsWith(path.join('cli', 'main.ts'))) {
  main(process.argv).then((code) => {
    // `start` keeps running; everything else exits with its code.
    if (process.argv[2] !== 'start' || code !== 0) process.exit(code)
  })
}
