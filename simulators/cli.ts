// `pulsegate simulate`: play a swarm of trackers, phone bridges and apps against a broker and score it.
import fs from 'node:fs'
import { pathToFileURL } from 'node:url'
import { Command, InvalidArgumentError, Option } from 'commander'
import type { Format, Scenario } from './protocol.js'

function positiveInt(name: string) {
  return (v: string): number => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError(`${name} must be a positive whole number`)
    return n
  }
}

function positive(name: string) {
  return (v: string): number => {
    const n = Number(v)
    if (!(Number.isFinite(n) && n > 0)) throw new InvalidArgumentError(`${name} must be a positive number`)
    return n
  }
}

function wholeNumber(name: string) {
  return (v: string): number => {
    const n = Number(v)
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${name} must be a whole number (0 or more)`)
    return n
  }
}

function share(name: string) {
  return (v: string): number => {
    const n = Number(v)
    if (!(Number.isFinite(n) && n >= 0 && n <= 1)) throw new InvalidArgumentError(`${name} must be between 0 and 1`)
    return n
  }
}

interface SimulateOpts {
  devices: number
  duration: number
  ramp: number
  scenario: Scenario
  qos: '0' | '1'
  batch: number
  rate: number
  format: Format
  workers?: number
  generatorNice?: number
  apps: number
  anomalies: number
  bridgeShare: number
  inflight: number
  buffer: number
  drain: number
  seed: number
  offlineShare: number
  offlineAt?: number
  offlineFor: number
  appReconnects: number
  lazyDevices?: boolean
  report?: string
  svg?: string
  url?: string
  wsUrl?: string
  mqttUrl?: string
  embeddedBroker?: boolean
  verify: boolean
  progress?: boolean
  signed?: boolean
  encrypted?: boolean
  maliciousShare: number
  historyDays?: number
  plantedShare: number
  minPrecision: number
  minRecall: number
}

export function simulateCommand(): Command {
  return new Command('simulate')
    .description(
      'play a swarm of simulated trackers (mTLS), phone bridges and apps against pulsegate and report throughput, ' +
        'latency and whether every acked reading is in the database exactly once',
    )
    .requiredOption('--devices <n>', 'number of devices', positiveInt('--devices'))
    .requiredOption(
      '--duration <s>',
      'seconds of sampling (then devices upload what they hold)',
      positive('--duration'),
    )
    .option('--ramp <r>', 'connections opened per second', positive('--ramp'), 200)
    .addOption(
      new Option('--scenario <name>', 'what the wearers do').choices(['marathon', 'wellness']).default('marathon'),
    )
    .addOption(new Option('--qos <q>', 'QoS of readings').choices(['0', '1']).default('1'))
    .option('--batch <n>', 'samples per batch', positiveInt('--batch'), 5)
    .option('--rate <hz>', 'samples per second per device', positive('--rate'), 1)
    .addOption(new Option('--format <f>', 'batch encoding').choices(['cbor', 'json']).default('cbor'))
    .option(
      '--workers <n>',
      'worker processes (default: one per core, minus one for an embedded broker)',
      positiveInt('--workers'),
    )
    .option(
      '--generator-nice <n>',
      'run the worker processes at this nice value (Linux), so the load generator does not starve a broker on the ' +
        'same cores (default 10 with --embedded-broker, else 0)',
      wholeNumber('--generator-nice'),
    )
    .option('--apps <share>', 'share of users with an app connected over WebSocket', share('--apps'), 0.2)
    .option('--anomalies <share>', 'share of users with an injected anomaly', share('--anomalies'), 0.01)
    .option(
      '--bridge-share <share>',
      'share of users relayed by a phone bridge (watch + strap)',
      share('--bridge-share'),
      0.05,
    )
    .option('--inflight <n>', 'QoS 1 batches in flight per connection', positiveInt('--inflight'), 4)
    .option('--buffer <samples>', 'samples a device buffers before dropping its oldest', positiveInt('--buffer'), 3600)
    .option('--drain <s>', 'seconds devices get to upload their buffers at the end', positive('--drain'), 30)
    .option('--seed <n>', 'random seed (same seed, same swarm)', positiveInt('--seed'), 1)
    .option(
      '--offline-share <share>',
      'share of users whose link is cut mid-run (a tunnel)',
      share('--offline-share'),
      0,
    )
    .option(
      '--offline-at <s>',
      'when the cut happens; a link not up yet then is cut once it is (default: a third into the run)',
      positive('--offline-at'),
    )
    .option('--offline-for <s>', 'how long the link stays down', positive('--offline-for'), 10)
    .option(
      '--app-reconnects <n>',
      'times each app drops its link during the run (it reconnects and catches up by delta sync)',
      wholeNumber('--app-reconnects'),
      0,
    )
    .option(
      '--lazy-devices',
      'model each device from its first link on, not from power-on (large swarms on few cores: no buffering ahead of the connect ramp)',
    )
    .option('--report <file.json>', 'write the full report as JSON')
    .option('--svg <file.svg>', 'write a chart of rates and ack latency over time')
    .option(
      '--url <mqtts://host:port,…>',
      'device listener, or several comma-separated (one per cluster node: devices spread round-robin and move on ' +
        'to the next after losing their link) (default: 127.0.0.1 and PULSEGATE_MQTTS_PORT)',
    )
    .option(
      '--ws-url <ws://host:port/mqtt,…>',
      'WebSocket listener(s) for apps, as --url (default: PULSEGATE_HTTP_PORT on the hosts of --url)',
    )
    .option(
      '--mqtt-url <mqtt://host:port,…>',
      'plain MQTT listener(s) for phone bridges (default: PULSEGATE_MQTT_PORT with one --url; else the WebSocket ones)',
    )
    .option(
      '--history-days <n>',
      'wellness: write N days of history (planted conditions) before the live part, run the daily rules and score them',
      positiveInt('--history-days'),
    )
    .option(
      '--planted-share <share>',
      'with --history-days: share of users planted with rhr_elevated, load_jump or step_goal conditions (split evenly)',
      share('--planted-share'),
      0.3,
    )
    .option(
      '--min-precision <p>',
      'with --history-days: fail below this precision for a planted rule',
      share('--min-precision'),
      1,
    )
    .option(
      '--min-recall <r>',
      'with --history-days: fail below this recall for a planted rule',
      share('--min-recall'),
      1,
    )
    .option('--embedded-broker', 'start pulsegate in this process on ephemeral ports (self-contained run)')
    .option('--no-verify', 'skip counting the acked readings in the database afterwards')
    .option('--no-progress', 'no progress display')
    .option(
      '--signed',
      'signed-readings scenario instead of the swarm: bridges relay COSE_Sign1 batches of their trackers ' +
        '(docs/device-signing.md); --devices, --duration, --batch, --seed, --mqtt-url, --embedded-broker, --report apply',
    )
    .option('--encrypted', 'with --signed: the trackers also encrypt (COSE_Encrypt0 around the Sign1)')
    .option(
      '--malicious-share <share>',
      'with --signed: share of bridges that alter values or replay a batch on another device',
      share('--malicious-share'),
      0.1,
    )
    .action(async (opts: SimulateOpts) => {
      if (opts.signed || opts.encrypted) {
        const { runSigned, signedSummary } = await import('./signed.js')
        const r = await runSigned({
          devices: opts.devices,
          durationS: opts.duration,
          batch: opts.batch,
          encrypted: opts.encrypted ?? false,
          maliciousShare: opts.maliciousShare,
          seed: opts.seed,
          embeddedBroker: opts.embeddedBroker ?? false,
          ...(opts.mqttUrl ? { mqttUrl: opts.mqttUrl } : {}),
        })
        console.log(signedSummary(r))
        if (opts.report) fs.writeFileSync(opts.report, `${JSON.stringify(r, null, 2)}\n`)
        if (!r.ok) throw new Error(`signed readings: ${r.problems.join('; ')}`)
        return
      }
      // Loaded on use, so the rest of the pulsegate CLI does not pay for the simulator's imports.
      const { runSwarm, summaryText } = await import('./swarm.js')
      const report = await runSwarm({
        devices: opts.devices,
        durationS: opts.duration,
        rampPerS: opts.ramp,
        scenario: opts.scenario,
        qos: opts.qos === '0' ? 0 : 1,
        batch: opts.batch,
        rateHz: opts.rate,
        format: opts.format,
        ...(opts.workers ? { workers: opts.workers } : {}),
        // With the broker in this process the workers share its cores by construction: they yield to it (as the
        // marathon bench does), measured on 2 cores: 10,000 devices at 300/s all connected by 51 s instead of 97 s.
        generatorNice: opts.generatorNice ?? (opts.embeddedBroker ? 10 : 0),
        appShare: opts.apps,
        anomalyShare: opts.anomalies,
        bridgeShare: opts.bridgeShare,
        inflight: opts.inflight,
        bufferSamples: opts.buffer,
        drainS: opts.drain,
        seed: opts.seed,
        appReconnects: opts.appReconnects,
        lazyDevices: opts.lazyDevices === true,
        offline:
          opts.offlineShare > 0
            ? { share: opts.offlineShare, atS: opts.offlineAt ?? opts.duration / 3, forS: opts.offlineFor }
            : null,
        ...(opts.report ? { report: opts.report } : {}),
        ...(opts.svg ? { svg: opts.svg } : {}),
        ...(opts.url ? { url: opts.url } : {}),
        ...(opts.wsUrl ? { wsUrl: opts.wsUrl } : {}),
        ...(opts.mqttUrl ? { mqttUrl: opts.mqttUrl } : {}),
        embeddedBroker: opts.embeddedBroker ?? false,
        verify: opts.verify,
        progress: opts.progress !== false,
        ...(opts.historyDays
          ? {
              historyDays: opts.historyDays,
              plantedShare: opts.plantedShare,
              minPrecision: opts.minPrecision,
              minRecall: opts.minRecall,
            }
          : {}),
      })
      console.log(summaryText(report))
      const v = report.verification
      // Thrown, not process.exitCode: the pulsegate CLI exits with the code its parse returns.
      if (v.status === 'failed') {
        throw new Error(
          `verification failed: ${v.lost} lost, ${v.duplicates} duplicates${v.reason ? ` (${v.reason})` : ''}`,
        )
      }
      const a = report.appConvergence
      if (a.status === 'failed') {
        throw new Error(
          `apps' copies differ from the database: ${a.missing} missing, ${a.extra} extra, ${a.duplicated} duplicated, ` +
            `${a.incomplete} not caught up${a.reason ? ` (${a.reason})` : ''}`,
        )
      }
      if (report.wellness && report.wellness.failures.length > 0)
        throw new Error(`recommendations below threshold: ${report.wellness.failures.join('; ')}`)
    })
}

// Also runnable on its own: `node dist/simulators/cli.js --devices 100 --duration 10 --embedded-broker`.
const invoked = process.argv[1] ? pathToFileURL(fs.realpathSync(process.argv[1])).href : ''
if (invoked === import.meta.url) {
  simulateCommand()
    .name('simulate')
    .parseAsync(process.argv)
    .then(
      () => process.exit(0),
      (err: Error) => {
        console.error(`simulate: ${err.message}`)
        process.exit(1)
      },
    )
}
