// `pulsegate users zones <userId> list | add <zoneId> --lat --lon --radius [--label] | remove <zoneId>`: a user's
// privacy zones (docs/privacy.md "Privacy zones"), offline against the store or live through a broker's admin RPC.
import type { Command } from 'commander'
import type { PrivacyZone } from '../insights/preferences/reader.js'
import { MAX_ZONE_RADIUS_M } from '../insights/preferences/wire.js'
import { ZoneError } from '../ops/zones.js'
import { withOps } from './ops.js'
import type { CliKit } from './users.js'

function formatZones(userId: string, zones: readonly PrivacyZone[]): string {
  if (zones.length === 0) return `${userId}: no privacy zones`
  const lines = zones.map(
    (z) =>
      `  ${z.id.padEnd(16)}${z.lat.toFixed(6)}, ${z.lon.toFixed(6)}  r ${z.radiusM} m${z.label ? `  ${z.label}` : ''}`,
  )
  return `privacy zones of ${userId}:\n${lines.join('\n')}`
}

function coordinate(kit: CliKit, flag: string, text: string | undefined, bound: number): number {
  const v = text === undefined ? Number.NaN : Number(text)
  if (!Number.isFinite(v) || Math.abs(v) > bound)
    throw kit.usage(`${flag} must be a number between -${bound} and ${bound}`)
  return v
}

export function addZoneCommands(users: Command, kit: CliKit): void {
  users
    .command('zones <userId> <action> [zoneId]')
    .description(
      'privacy zones (circles in which positions are stored but never published to others): list | add <zoneId> --lat --lon --radius [--label] | remove <zoneId>',
    )
    .option('--lat <degrees>', 'centre latitude (WGS 84)')
    .option('--lon <degrees>', 'centre longitude (WGS 84)')
    .option('--radius <metres>', `radius in metres (1–${MAX_ZONE_RADIUS_M})`)
    .option('--label <text>', 'a label for the user, e.g. "home"')
    .option('--json', 'print the zones as JSON')
    .option('--broker <url>', "a running broker's HTTP address (http://host:8080): change the zones through it, live")
    .action(
      async (
        userIdArg: string,
        action: string,
        zoneIdArg: string | undefined,
        opts: { lat?: string; lon?: string; radius?: string; label?: string; json?: boolean; broker?: string },
      ) => {
        const cfg = kit.config()
        const userId = kit.requireId('user id', userIdArg)
        if (opts.broker !== undefined && !/^https?:\/\/[^/\s]+\/?$/.test(opts.broker))
          throw kit.usage(`--broker must be an http(s)://host:port address, not ${JSON.stringify(opts.broker)}`)
        const via = opts.broker ? { brokerUrl: opts.broker } : {}
        const needZone = () => {
          if (zoneIdArg === undefined) throw kit.usage(`users zones ${action} needs a zone id, e.g. home`)
          return kit.requireId('zone id', zoneIdArg)
        }
        let zones: PrivacyZone[]
        try {
          if (action === 'list') {
            zones = ((await withOps(cfg, (op) => op({ op: 'listZones', userId }), via)) as { zones: PrivacyZone[] })
              .zones
          } else if (action === 'add') {
            const zoneId = needZone()
            const lat = coordinate(kit, '--lat', opts.lat, 90)
            const lon = coordinate(kit, '--lon', opts.lon, 180)
            const radiusM = opts.radius === undefined ? Number.NaN : Number(opts.radius)
            if (!(radiusM >= 1 && radiusM <= MAX_ZONE_RADIUS_M))
              throw kit.usage(`--radius must be a number of metres between 1 and ${MAX_ZONE_RADIUS_M}`)
            const label = opts.label
            if (label !== undefined && label.length === 0) throw kit.usage('--label must not be empty')
            const req = { op: 'setZone' as const, userId, zoneId, lat, lon, radiusM, ...(label ? { label } : {}) }
            zones = ((await withOps(cfg, (op) => op(req), via)) as { zones: PrivacyZone[] }).zones
          } else if (action === 'remove') {
            const zoneId = needZone()
            const res = (await withOps(cfg, (op) => op({ op: 'removeZone', userId, zoneId }), via)) as {
              removed: boolean
              zones: PrivacyZone[]
            }
            if (!res.removed) throw kit.usage(`${userId} has no privacy zone ${zoneId}`)
            zones = res.zones
          } else throw kit.usage(`say list, add or remove, not ${JSON.stringify(action)}`)
        } catch (err) {
          if (err instanceof ZoneError) throw kit.usage(err.message)
          throw err
        }
        console.log(opts.json ? JSON.stringify(zones, null, 2) : formatZones(userId, zones))
      },
    )
}
