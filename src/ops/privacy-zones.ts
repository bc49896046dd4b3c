// Privacy zones applied (docs/privacy.md "Privacy zones"): per user, the circles of their synced preferences
// (`privacyZones.<id>`), compiled once into bounding boxes and kept until the preferences change, so the check on a
// published position is a few comparisons in memory — a haversine only for a point already inside a zone's box — and
// never a query. The zones themselves live in the preferences CRDT (src/insights/preferences), which loads and
// caches them; this follows its changes.
import type { PreferencesService } from '../insights/preferences/service.js'
import type { PrivacyZone } from '../insights/preferences/reader.js'
import type { ZoneGate } from '../outputs/zone-gate.js'
import { EARTH_RADIUS_M, haversineMeters } from '../pipeline/validate-speed.js'

/** metres per degree of latitude */
const M_PER_DEG = (Math.PI * EARTH_RADIUS_M) / 180

export interface CompiledZone {
  lat: number
  lon: number
  radiusM: number
  /** half-height of the bounding box, degrees of latitude */
  dLat: number
  /** half-width, degrees of longitude; Infinity where the box reaches a pole */
  dLon: number
}

export function compileZone(z: Pick<PrivacyZone, 'lat' | 'lon' | 'radiusM'>): CompiledZone {
  // A little over the radius: the box must never cut off a point the exact test would count as inside.
  const dLat = (z.radiusM / M_PER_DEG) * 1.001
  const edge = Math.abs(z.lat) + dLat
  const dLon = edge >= 89.9 ? Number.POSITIVE_INFINITY : dLat / Math.cos((edge * Math.PI) / 180)
  return { lat: z.lat, lon: z.lon, radiusM: z.radiusM, dLat, dLon }
}

/** Is (lat, lon) inside the circle (its rim included)? */
export function inZone(z: CompiledZone, lat: number, lon: number): boolean {
  if (Math.abs(lat - z.lat) > z.dLat) return false
  if (z.dLon !== Number.POSITIVE_INFINITY) {
    // Across the antimeridian too: the difference folded into [-180, 180).
    const d = Math.abs(((((lon - z.lon + 180) % 360) + 360) % 360) - 180)
    if (d > z.dLon) return false
  }
  return haversineMeters(z.lat, z.lon, lat, lon) <= z.radiusM
}

export function inAnyZone(zones: readonly CompiledZone[], lat: number, lon: number): boolean {
  for (const z of zones) if (inZone(z, lat, lon)) return true
  return false
}

const NONE: readonly CompiledZone[] = []

/** The outputs' ZoneGate over the broker's PreferencesService. */
export class PrivacyZoneIndex implements ZoneGate {
  private readonly compiled = new Map<string, readonly CompiledZone[]>()
  private readonly unsubscribe: () => void

  constructor(private readonly preferences: Pick<PreferencesService, 'get' | 'load' | 'onChange'>) {
    this.unsubscribe = preferences.onChange((userId) => this.compiled.delete(userId))
  }

  load(userIds: readonly string[]): Promise<void> {
    return this.preferences.load(userIds)
  }

  withheld(userId: string, lat: number, lon: number): boolean {
    let zones = this.compiled.get(userId)
    if (!zones) {
      const list = this.preferences.get(userId).privacyZones
      zones = list ? list.map(compileZone) : NONE
      this.compiled.set(userId, zones)
    }
    return zones.length > 0 && inAnyZone(zones, lat, lon)
  }

  stop(): void {
    this.unsubscribe()
    this.compiled.clear()
  }
}
