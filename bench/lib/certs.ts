// Device certificates for the benchmarks, issued once and cached: a development PKI (CA + server certificate, made by
// src/identity/pki.ts `initPki`) and ECDSA P-256 device certificates `bench-000000…` signed by it (`issueDeviceCert`,
// ~12–18 ms each). The cache lives in `<os.tmpdir()>/bench-certs` (override: PULSEGATE_BENCH_CERTS) and only grows:
// a run that needs N devices issues whatever is missing and reuses the rest, so 5000 certificates cost ~60 s once and
// nothing afterwards. The broker under test is pointed at this CA/server pair through `tls.caFile/certFile/keyFile`.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { initPki, issueDeviceCert, pkiPaths } from '../../src/identity/pki.js'

export interface BenchDevice {
  deviceId: string
  userId: string
  certPath: string
  keyPath: string
  fingerprint: string
}

export interface BenchPki {
  dir: string
  caCert: string
  serverCert: string
  serverKey: string
  devices: BenchDevice[]
  /** certificates issued by this call (0 when the cache had them all) */
  issued: number
  issueMs: number
}

export const deviceIdOf = (i: number) => `bench-${String(i).padStart(6, '0')}`

export function certCacheDir(): string {
  return process.env.PULSEGATE_BENCH_CERTS ?? path.join(os.tmpdir(), 'bench-certs')
}

/** The first `count` bench devices, issuing the missing ones (`concurrency` at a time: WebCrypto runs off-thread). */
export async function ensureBenchCerts(
  count: number,
  opts: { concurrency?: number; onProgress?: (done: number, total: number) => void } = {},
): Promise<BenchPki> {
  const dir = certCacheDir()
  await initPki(dir) // idempotent: creates the CA and server certificate on the first run only
  const p = pkiPaths(dir)
  const manifestPath = path.join(dir, 'fingerprints.json')
  let manifest: Record<string, string> = {}
  try {
    manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as Record<string, string>
  } catch {
    manifest = {}
  }
  const missing: number[] = []
  for (let i = 0; i < count; i++) {
    const id = deviceIdOf(i)
    if (!manifest[id] || !fs.existsSync(path.join(p.devicesDir, `${id}.crt`))) missing.push(i)
  }
  const started = performance.now()
  let next = 0
  let done = 0
  const worker = async () => {
    while (next < missing.length) {
      const i = missing[next++] as number
      const issued = await issueDeviceCert(dir, deviceIdOf(i))
      manifest[issued.deviceId] = issued.fingerprint256
      done++
      if (done % 250 === 0) {
        opts.onProgress?.(done, missing.length)
        fs.writeFileSync(manifestPath, JSON.stringify(manifest))
      }
    }
  }
  await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 8) }, worker))
  if (missing.length > 0) fs.writeFileSync(manifestPath, JSON.stringify(manifest))
  const devices: BenchDevice[] = []
  for (let i = 0; i < count; i++) {
    const id = deviceIdOf(i)
    devices.push({
      deviceId: id,
      userId: `bench-user-${String(i).padStart(6, '0')}`,
      certPath: path.join(p.devicesDir, `${id}.crt`),
      keyPath: path.join(p.devicesDir, `${id}.key`),
      fingerprint: manifest[id] as string,
    })
  }
  return {
    dir,
    caCert: p.caCert,
    serverCert: p.serverCert,
    serverKey: p.serverKey,
    devices,
    issued: missing.length,
    issueMs: performance.now() - started,
  }
}
