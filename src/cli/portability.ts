// `pulsegate users export` and `users import`: offline against the configured store, or live through the admin HTTP
// routes of the broker that owns the embedded store (the file streams over HTTP both ways, never buffered whole).
import fs from 'node:fs'
import http from 'node:http'
import type { Writable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { type Command, Option } from 'commander'
import { type BrokerConfig, loadConfig } from '../../broker.config.js'
import type { AuditSink } from '../ops/audit-types.js'
import { PortabilityError } from '../ops/errors.js'
import { EXPORT_FORMATS, type ExportFormat, type ExportReport, exportUser } from '../ops/export.js'
import { IMPORT_FORMATS, type ImportFormat, type ImportReport, importUser } from '../ops/import.js'
import type { Db } from '../store/db.js'
import { isValidId } from '../topics/grammar.js'
import { EXPORT_PATH, EXPORT_TRAILER, IMPORT_PATH } from '../transport/portability-routes.js'
import { UsageError } from './errors.js'
import { liveBroker, withStore } from './ops.js'

export interface PortabilityCliDeps {
  /** the audit log to record offline exports and imports in (live ones are recorded by the broker) */
  auditFor?: (db: Db, cfg: BrokerConfig) => AuditSink
}

function requireId(kind: string, value: string): string {
  if (!isValidId(value)) throw new UsageError(`invalid ${kind} ${JSON.stringify(value)}: use 1–64 of [A-Za-z0-9_-]`)
  return value
}

function parseIso(flag: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined
  const t = Date.parse(v)
  if (Number.isNaN(t)) throw new UsageError(`${flag} must be an ISO 8601 time (got ${JSON.stringify(v)})`)
  return t
}

/** The caller's mistakes (unknown user, someone else's device, an unreadable file) exit 2 like usage errors. */
async function asUsage<T>(p: Promise<T>): Promise<T> {
  try {
    return await p
  } catch (err) {
    if (err instanceof PortabilityError) throw new UsageError(err.message)
    throw err
  }
}

/** A broker's error answer: 4xx are the caller's mistakes. */
async function failure(res: http.IncomingMessage): Promise<Error> {
  let text = ''
  for await (const c of res) text += String(c)
  let message = `broker answered HTTP ${res.statusCode}`
  try {
    message = (JSON.parse(text) as { error?: string }).error ?? message
  } catch {
    // not JSON: keep the status
  }
  return (res.statusCode ?? 500) < 500 ? new UsageError(message) : new Error(message)
}

function request(
  url: string,
  init: http.RequestOptions,
): { req: http.ClientRequest; res: Promise<http.IncomingMessage> } {
  const req = http.request(url, init)
  const res = new Promise<http.IncomingMessage>((resolve, reject) => {
    req.once('response', resolve)
    req.once('error', reject)
  })
  return { req, res }
}

async function exportLive(
  live: { baseUrl: string; token: string },
  q: URLSearchParams,
  out: Writable,
): Promise<ExportReport> {
  const { req, res: pending } = request(`${live.baseUrl}${EXPORT_PATH}?${q}`, {
    headers: { authorization: `Bearer ${live.token}` },
  })
  req.end()
  const res = await pending
  if (res.statusCode !== 200) throw await failure(res)
  await pipeline(res, out, { end: false })
  // The broker sends its report after the last byte; a body cut short by an error on its side has none.
  const report = res.trailers[EXPORT_TRAILER.toLowerCase()]
  if (!report) throw new Error('the broker ended the export early: the output is incomplete')
  return JSON.parse(report) as ExportReport
}

async function importLive(live: { baseUrl: string; token: string }, q: URLSearchParams, file: string) {
  const { req, res: pending } = request(`${live.baseUrl}${IMPORT_PATH}?${q}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${live.token}`, 'content-type': 'application/octet-stream' },
  })
  // The broker may answer before the upload ends (a device that is not the user's): its answer is what counts.
  const upload = pipeline(fs.createReadStream(file), req).catch((err: Error) => err)
  const res = await pending
  if (res.statusCode !== 200) {
    const err = await failure(res)
    req.destroy() // the rest of the upload is not wanted
    throw err
  }
  let text = ''
  for await (const c of res) text += String(c)
  const uploaded = await upload
  if (uploaded instanceof Error) throw uploaded
  return JSON.parse(text) as ImportReport
}

function exportSummary(r: ExportReport, where: string): string {
  const parts = Object.entries(r.rows).map(([k, n]) => `${k} ${n}`)
  return `exported ${r.total} rows of ${r.userId} as ${r.format} (${parts.join(', ') || 'none'}), ${r.bytes} bytes → ${where}`
}

function importSummary(userId: string, r: ImportReport): string {
  const refused = Object.entries(r.refused).map(([k, n]) => `${k} ${n}`)
  return (
    `imported ${r.imported} rows for ${userId} from ${r.format} (samples ${r.rows.samples}, positions ${r.rows.positions}); ` +
    `${r.duplicates} duplicates; refused: ${refused.join(', ') || 'none'}`
  )
}

async function runExport(
  deps: PortabilityCliDeps,
  userId: string,
  opts: { format: ExportFormat; from?: string; to?: string; output?: string },
): Promise<void> {
  const cfg = loadConfig()
  const from = parseIso('--from', opts.from)
  const to = parseIso('--to', opts.to)
  if (from !== undefined && to !== undefined && from >= to) throw new UsageError('--from must be before --to')
  // A file is written under a temporary name and renamed when complete: a failed export leaves no file behind.
  const partial = opts.output ? `${opts.output}.partial-${process.pid}` : null
  const out: Writable = partial ? fs.createWriteStream(partial) : process.stdout
  try {
    const live = await liveBroker(cfg)
    let report: ExportReport
    if (live) {
      const q = new URLSearchParams({ user: userId, format: opts.format })
      if (from !== undefined) q.set('from', new Date(from).toISOString())
      if (to !== undefined) q.set('to', new Date(to).toISOString())
      report = await exportLive(live, q, out)
    } else {
      report = await withStore(cfg, (db) =>
        asUsage(
          exportUser(db, out, {
            userId,
            format: opts.format,
            range: { ...(from !== undefined ? { from } : {}), ...(to !== undefined ? { to } : {}) },
            ...(deps.auditFor ? { audit: deps.auditFor(db, cfg) } : {}),
          }),
        ),
      )
    }
    if (partial && opts.output) {
      await new Promise<void>((resolve, reject) => out.end((err?: Error | null) => (err ? reject(err) : resolve())))
      fs.renameSync(partial, opts.output)
      console.log(exportSummary(report, opts.output))
    } else {
      console.error(exportSummary(report, 'standard output'))
    }
  } catch (err) {
    if (partial) {
      out.destroy()
      fs.rmSync(partial, { force: true })
    }
    throw err
  }
}

async function runImport(
  deps: PortabilityCliDeps,
  userId: string,
  file: string,
  opts: { device: string; format?: ImportFormat },
): Promise<void> {
  const cfg = loadConfig()
  const deviceId = requireId('device id', opts.device)
  if (!fs.existsSync(file) || !fs.statSync(file).isFile()) throw new UsageError(`no such file: ${file}`)
  const live = await liveBroker(cfg)
  const report = live
    ? await importLive(
        live,
        new URLSearchParams({ user: userId, device: deviceId, ...(opts.format ? { format: opts.format } : {}) }),
        file,
      )
    : await withStore(cfg, async (db) => {
        const input = fs.createReadStream(file)
        try {
          return await asUsage(
            importUser(db, input, {
              userId,
              deviceId,
              ...(opts.format ? { format: opts.format } : {}),
              rules: { maxFutureSkewMs: cfg.ingest.maxFutureSkewMs, maxFootSpeedMps: cfg.ingest.maxFootSpeedMps },
              ...(deps.auditFor ? { audit: deps.auditFor(db, cfg) } : {}),
            }),
          )
        } finally {
          input.destroy() // read to its end, or abandoned on an error
        }
      })
  console.log(importSummary(userId, report))
}

/** Adds `export` and `import` to the `users` command. */
export function addPortabilityCommands(users: Command, deps: PortabilityCliDeps = {}): void {
  users
    .command('export <userId>')
    .description(
      "export a person's data: Open mHealth NDJSON, CSV, GPX 1.1 (positions) or a bundle (tar with a manifest of hashes, consents, alerts, audit trail)",
    )
    .addOption(new Option('--format <format>', 'output format').choices(EXPORT_FORMATS).makeOptionMandatory())
    .option('--from <iso>', 'readings from this time on (ISO 8601)')
    .option('--to <iso>', 'readings before this time (ISO 8601)')
    .option('-o, --output <file>', 'write to this file (default: standard output; the summary goes to stderr)')
    .action((userIdArg: string, opts: { format: ExportFormat; from?: string; to?: string; output?: string }) =>
      runExport(deps, requireId('user id', userIdArg), opts),
    )
  users
    .command('import <userId> <file>')
    .description(
      "import a person's history (NDJSON, CSV, GPX or a bundle, as exported): validated like live readings but without the late-arrival window; duplicates are skipped",
    )
    .requiredOption(
      '--device <deviceId>',
      "the user's device the rows are attributed to (unless a row names another of theirs)",
    )
    .addOption(new Option('--format <format>', 'input format (default: told from the content)').choices(IMPORT_FORMATS))
    .action((userIdArg: string, file: string, opts: { device: string; format?: ImportFormat }) =>
      runImport(deps, requireId('user id', userIdArg), file, opts),
    )
}
