// A device that moves node (its old node died, or the load balancer sent its reconnect elsewhere) continues its
// track from the newest committed fix, not from whatever this process remembered from an earlier visit: A→B→A would
// otherwise derive one straight segment from a stale fix and count what B derived twice (scale-out.md §5.3).
// The CONNACK waits for the look-up, so no reading of the new connection is validated before it.
import type { Aedes, Client } from 'aedes'
import type { Principals } from '../hooks/types.js'
import type { Logger } from '../log.js'
import type { Db } from '../store/db.js'

type AuthenticateHook = NonNullable<import('aedes').AedesOptions['authenticate']>

export interface DeviceResume {
  resumeDevice(deviceKey: number, lastFix: { t: number; lat: number; lon: number } | null): void
}

export async function lastFixOf(db: Db, deviceKey: number): Promise<{ t: number; lat: number; lon: number } | null> {
  const r = await db.query<{ t: string | number; lat: number; lon: number }>(
    'SELECT (extract(epoch FROM time) * 1000)::float8 AS t, lat, lon FROM positions WHERE device_key = $1 ORDER BY time DESC LIMIT 1',
    [deviceKey],
  )
  const row = r.rows[0]
  return row ? { t: Math.round(Number(row.t)), lat: row.lat, lon: row.lon } : null
}

export function resumeDevicesOnConnect(
  aedes: Aedes,
  deps: { db: Db; principals: Principals; ingest: DeviceResume; log: Logger },
): void {
  const internals = aedes as unknown as { authenticate: AuthenticateHook }
  const authenticate = internals.authenticate
  internals.authenticate = (client: Client, username, password, cb) => {
    authenticate(client, username, password, (err, ok) => {
      const p = ok && !err ? deps.principals.get(client) : undefined
      if (p?.role !== 'device' || p.deviceKey === null) return cb(err, ok)
      const deviceKey = p.deviceKey
      lastFixOf(deps.db, deviceKey).then(
        (fix) => {
          deps.ingest.resumeDevice(deviceKey, fix)
          cb(null, true)
        },
        (e: Error) => {
          // Without its last fix the device would lose (never double) one segment; refusing is worse.
          deps.log.warn({ err: e.message, deviceId: p.deviceId }, 'cluster: last position not loaded')
          deps.ingest.resumeDevice(deviceKey, null)
          cb(null, true)
        },
      )
    })
  }
}
