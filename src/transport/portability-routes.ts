// Export and import over HTTP, for the CLI while a broker owns the embedded store (admin JWT), both streamed:
//   GET  /admin/export?user=&format=ndjson|csv|gpx|bundle[&from=&to=]  → the file as a chunked body; the report
//        follows in the trailer X-Pulsegate-Export (a body cut short by an error has no trailer: the CLI fails)
//   POST /admin/import?user=&device=[&format=]  (body: the file)          → the import report as JSON
import type http from 'node:http'
import { z } from 'zod'
import type { BrokerConfig } from '../../broker.config.js'
import type { Principal } from '../identity/principal.js'
import type { Tokens } from '../identity/tokens.js'
import type { Logger } from '../log.js'
import type { AuditActor, AuditSink } from '../ops/audit-types.js'
import { PortabilityError } from '../ops/errors.js'
import { EXPORT_FORMATS, type ExportFormat, exportUser } from '../ops/export.js'
import { IMPORT_FORMATS, importUser } from '../ops/import.js'
import type { Db } from '../store/db.js'

export const EXPORT_PATH = '/admin/export'
export const IMPORT_PATH = '/admin/import'
export const EXPORT_TRAILER = 'X-Pulsegate-Export'

export interface PortabilityDeps {
  config: BrokerConfig
  db: Db
  tokens: Tokens
  audit?: AuditSink
  log: Logger
}

const id = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/)
const iso = z.iso.datetime({ offset: true })
const exportQuery = z.object({
  user: id,
  format: z.enum(EXPORT_FORMATS),
  from: iso.optional(),
  to: iso.optional(),
})
const importQuery = z.object({ user: id, device: id, format: z.enum(IMPORT_FORMATS).optional() })

export const CONTENT_TYPES: Record<ExportFormat, string> = {
  ndjson: 'application/x-ndjson',
  csv: 'text/csv; charset=utf-8',
  gpx: 'application/gpx+xml',
  bundle: 'application/x-tar',
}
export const FILE_EXTENSIONS: Record<ExportFormat, string> = { ndjson: 'ndjson', csv: 'csv', gpx: 'gpx', bundle: 'tar' }

function sendJson(res: http.ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' })
  res.end(JSON.stringify(body))
}

async function admin(deps: PortabilityDeps, req: http.IncomingMessage, res: http.ServerResponse) {
  const bearer = /^Bearer\s+(.+)$/i.exec(req.headers.authorization ?? '')?.[1]
  if (!bearer) return void sendJson(res, 401, { error: 'admin token required' })
  let p: Principal
  try {
    p = await deps.tokens.verify(bearer)
  } catch (err) {
    return void sendJson(res, 401, { error: (err as Error).message })
  }
  if (p.role !== 'admin') return void sendJson(res, 403, { error: 'admin role required' })
  return { role: 'admin', id: p.userId } satisfies AuditActor
}

function query<T>(schema: z.ZodType<T>, url: URL, res: http.ServerResponse): T | undefined {
  const parsed = schema.safeParse(Object.fromEntries(url.searchParams))
  if (parsed.success) return parsed.data
  sendJson(res, 400, { error: parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ') })
  return undefined
}

function refusal(res: http.ServerResponse, err: PortabilityError): void {
  // No `Connection: close` for an import refused before its body was read: closing with unread bytes would reset the
  // connection and the client could lose this answer. Node discards the rest of the body; the client stops sending.
  sendJson(res, err.kind === 'not_found' ? 404 : 400, { error: err.message })
}

/** Handles the two routes; false for any other path. */
export async function handlePortability(
  deps: PortabilityDeps,
  req: http.IncomingMessage,
  res: http.ServerResponse,
  url: URL,
): Promise<boolean> {
  const isExport = req.method === 'GET' && url.pathname === EXPORT_PATH
  const isImport = req.method === 'POST' && url.pathname === IMPORT_PATH
  if (!isExport && !isImport) return false
  const actor = await admin(deps, req, res)
  if (!actor) return true

  if (isExport) {
    const q = query(exportQuery, url, res)
    if (!q) return true
    res.statusCode = 200
    res.setHeader('content-type', CONTENT_TYPES[q.format])
    res.setHeader('content-disposition', `attachment; filename="${q.user}.${FILE_EXTENSIONS[q.format]}"`)
    res.setHeader('cache-control', 'no-store')
    res.setHeader('trailer', EXPORT_TRAILER)
    try {
      const report = await exportUser(deps.db, res, {
        userId: q.user,
        format: q.format,
        range: {
          ...(q.from ? { from: Date.parse(q.from) } : {}),
          ...(q.to ? { to: Date.parse(q.to) } : {}),
        },
        ...(deps.audit ? { audit: deps.audit } : {}),
        actor,
      })
      res.addTrailers({ [EXPORT_TRAILER]: JSON.stringify(report) })
      res.end()
    } catch (err) {
      if (err instanceof PortabilityError && !res.headersSent) {
        refusal(res, err)
        return true
      }
      deps.log.error({ err: (err as Error).message, user: q.user }, 'export failed')
      if (!res.headersSent) sendJson(res, 500, { error: 'export failed' })
      else res.destroy() // cut short, without the trailer: the client knows the file is incomplete
    }
    return true
  }

  const q = query(importQuery, url, res)
  if (!q) return true
  try {
    const report = await importUser(deps.db, req, {
      userId: q.user,
      deviceId: q.device,
      ...(q.format ? { format: q.format } : {}),
      rules: {
        maxFutureSkewMs: deps.config.ingest.maxFutureSkewMs,
        maxFootSpeedMps: deps.config.ingest.maxFootSpeedMps,
      },
      // The broker's own ingest shares this store (one connection when embedded): smaller statements keep its
      // commits from waiting behind a long import statement.
      batchRows: deps.db.kind === 'embedded' ? 10_000 : 50_000,
      ...(deps.audit ? { audit: deps.audit } : {}),
      actor,
    })
    sendJson(res, 200, report)
  } catch (err) {
    if (err instanceof PortabilityError) refusal(res, err)
    else {
      deps.log.error({ err: (err as Error).message, user: q.user }, 'import failed')
      sendJson(res, 500, { error: 'import failed' })
    }
  }
  return true
}
