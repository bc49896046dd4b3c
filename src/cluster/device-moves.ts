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

/** The newest committed fix of each of a user's devices (null for one without positions), for a bridge's devices. */
export async function lastFixesOfUser(
  db: Db,
  userId: string,
): Promise<{ deviceKey: number; deviceId: string; fix: { t: number; lat: number; lon: number } | null }[]> {
  const r = await db.query<{
    device_key: number
    device_id: string
    t: string | number | null
    lat: number | null
    lon: number | null
  }>(
    `SELECT d.device_key, d.device_id, (extract(epoch FROM f.time) * 1000)::float8 AS t, f.lat, f.lon
       FROM devices d
       LEFT JOIN LATERAL (
         SELECT time, lat, lon FROM positions WHERE device_key = d.device_key ORDER BY time DESC LIMIT 1
       ) f ON true
      WHERE d.user_id = $1`,
    [userId],
  )
  return r.rows.map((row) => ({
    deviceKey: row.device_key,
    deviceId: row.device_id,
    fix:
      row.t === null || row.lat === null || row.lon === null
        ? null
        : { t: Math.round(Number(row.t)), lat: row.lat, lon: row.lon },
  }))
}

export function resumeDevicesOnConnect(
  aedes: Aedes,
  deps: { db: Db; principals: Principals; ingest: DeviceResume; log: Logger },
): void {
  const internals = aedes as unknown as { authenticate: AuthenticateHook; clients: Record<string, Client | undefined> }
  const authenticate = internals.authenticate
  const connected = (deviceId: string) => internals.clients[deviceId] !== undefined
  internals.authenticate = (client: Client, username, password, cb) => {
    authenticate(client, username, password, (err, ok) => {
      const p = ok && !err ? deps.principals.get(client) : undefined
      // A phone bridge relays its user's devices: when it moves node, so do they (their tracks continue here).
      const fixes =
        p?.role === 'device' && p.deviceKey !== null
          ? lastFixOf(deps.db, p.deviceKey).then((fix) => [{ deviceKey: p.deviceKey as number, fix }])
          : p?.role === 'bridge' && p.userId !== null
            ? // A device connected here on its own keeps its state: it may hold a validated fix not yet committed.
              lastFixesOfUser(deps.db, p.userId).then((list) => list.filter((d) => !connected(d.deviceId)))
            : null
      if (!fixes) return cb(err, ok)
      fixes.then(
        (list) => {
          for (const { deviceKey, fix } of list) deps.ingest.resumeDevice(deviceKey, fix)
          cb(null, true)
        },
        (e: Error) => {
          // Without its last fix a device would lose (never double) one segment; refusing is worse.
          deps.log.warn({ err: e.message, clientId: client.id }, 'cluster: last position not loaded')
          if (p?.role === 'device' && p.deviceKey !== null) deps.ingest.resumeDevice(p.deviceKey, null)
          cb(null, true)
        },
      )
    })
  }
}
