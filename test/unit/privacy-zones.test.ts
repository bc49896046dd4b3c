// Privacy zones: the point-in-circle check against the exact great-circle distance (rim, antimeridian, poles), the
// per-user index following the preferences' changes, and the zone field of the preferences wire format.
import fc from 'fast-check'
import { describe, expect, it } from 'vitest'
import { entry, join, project, ZONE_PREFIX } from '../../src/insights/preferences/crdt.js'
import type { Preferences } from '../../src/insights/preferences/reader.js'
import { MAX_ZONE_RADIUS_M, parsePreferencesMessage } from '../../src/insights/preferences/wire.js'
import { compileZone, inZone, PrivacyZoneIndex } from '../../src/ops/privacy-zones.js'
import { haversineMeters } from '../../src/pipeline/validate-speed.js'

const NOW = 1_764_061_200_000

/** The point `m` metres from (lat, lon) along a bearing, on the sphere haversineMeters uses. */
function destination(lat: number, lon: number, m: number, bearingDeg: number): [number, number] {
  const R = 6_371_008.8
  const d = m / R
  const th = (bearingDeg * Math.PI) / 180
  const p1 = (lat * Math.PI) / 180
  const l1 = (lon * Math.PI) / 180
  const p2 = Math.asin(Math.sin(p1) * Math.cos(d) + Math.cos(p1) * Math.sin(d) * Math.cos(th))
  const l2 = l1 + Math.atan2(Math.sin(th) * Math.sin(d) * Math.cos(p1), Math.cos(d) - Math.sin(p1) * Math.sin(p2))
  return [(p2 * 180) / Math.PI, (((((l2 * 180) / Math.PI + 540) % 360) + 360) % 360) - 180]
}

describe('point in zone', () => {
  it('agrees with the great-circle distance everywhere, boxes never cutting off a point inside', () => {
    fc.assert(
      fc.property(
        fc.double({ min: -89.99, max: 89.99, noNaN: true }),
        fc.double({ min: -180, max: 180, noNaN: true }),
        fc.double({ min: 1, max: MAX_ZONE_RADIUS_M, noNaN: true }),
        fc.double({ min: 0, max: 3, noNaN: true }),
        fc.double({ min: 0, max: 360, noNaN: true }),
        (lat, lon, radiusM, factor, bearing) => {
          const [plat, plon] = destination(lat, lon, radiusM * factor, bearing)
          const z = compileZone({ lat, lon, radiusM })
          expect(inZone(z, plat, plon)).toBe(haversineMeters(lat, lon, plat, plon) <= radiusM)
        },
      ),
      { numRuns: 3000 },
    )
  })

  it('counts the rim, and works across the antimeridian and at the poles', () => {
    const home = compileZone({ lat: 52.5, lon: 13.4, radiusM: 200 })
    const [rLat, rLon] = destination(52.5, 13.4, 199.9, 45)
    expect(inZone(home, rLat, rLon)).toBe(true)
    const [oLat, oLon] = destination(52.5, 13.4, 200.5, 45)
    expect(inZone(home, oLat, oLon)).toBe(false)
    const fiji = compileZone({ lat: -17, lon: 179.999, radiusM: 500 })
    expect(inZone(fiji, -17, -179.999)).toBe(true) // ~213 m away, across the date line
    expect(inZone(fiji, -17, 179.99)).toBe(false) // ~950 m
    const pole = compileZone({ lat: 89.999, lon: 0, radiusM: 1000 })
    expect(inZone(pole, 89.9985, 180)).toBe(true) // over the pole, ~278 m
  })
})

describe('PrivacyZoneIndex', () => {
  it('compiles a user’s zones once and recompiles when their preferences change', () => {
    const state = new Map<string, Preferences>()
    const listeners: ((u: string) => void)[] = []
    let reads = 0
    const index = new PrivacyZoneIndex({
      get: (u) => {
        reads++
        return state.get(u) ?? { mutedRules: [] }
      },
      load: async () => {},
      onChange: (l) => {
        listeners.push(l)
        return () => {}
      },
    })
    expect(index.withheld('u1', 52.5, 13.4)).toBe(false)
    state.set('u1', { mutedRules: [], privacyZones: [{ id: 'home', lat: 52.5, lon: 13.4, radiusM: 100 }] })
    expect(index.withheld('u1', 52.5, 13.4)).toBe(false) // not told yet: still the compiled (empty) list
    for (const l of listeners) l('u1')
    expect(index.withheld('u1', 52.5, 13.4)).toBe(true)
    expect(index.withheld('u1', 52.5005, 13.4)).toBe(true) // ~56 m
    expect(index.withheld('u1', 52.502, 13.4)).toBe(false) // ~222 m
    expect(index.withheld('u2', 52.5, 13.4)).toBe(false) // zones are per user
    expect(reads).toBe(3) // u1 twice (before and after the change), u2 once: not once per position
  })
})

describe('zone field of the preferences', () => {
  const parse = (edits: unknown[]) =>
    parsePreferencesMessage(Buffer.from(JSON.stringify({ node: 'phone-1', edits })), NOW, 3600_000)

  it('accepts a circle (normalised key order) or null, one register per zone id', () => {
    const r = parse([
      {
        field: 'privacyZones.home',
        value: { radiusM: 150, label: 'Home', lon: 13.4, lat: 52.5 },
        hlc: `${NOW}:0:phone-1`,
      },
      { field: 'privacyZones.work', value: null, hlc: `${NOW}:0:phone-1` },
    ])
    expect(r.ok).toBe(true)
    if (!r.ok) return
    expect(r.entries.map((e) => e.entry.key)).toEqual(['{"lat":52.5,"lon":13.4,"radiusM":150,"label":"Home"}', 'null'])
    const map = new Map(r.entries.map((e) => [e.field, e.entry]))
    expect(project(map).privacyZones).toEqual([{ id: 'home', lat: 52.5, lon: 13.4, radiusM: 150, label: 'Home' }])
    // A later null removes the zone; an older one does not.
    const removed = join(map, new Map([[`${ZONE_PREFIX}home`, entry(null, { wall: NOW + 1, counter: 0, node: 'w' })]]))
    expect(project(removed).privacyZones).toBeUndefined()
    const stale = join(map, new Map([[`${ZONE_PREFIX}home`, entry(null, { wall: NOW - 1, counter: 0, node: 'w' })]]))
    expect(project(stale).privacyZones).toHaveLength(1)
  })

  it.each([
    [{ lat: 91, lon: 0, radiusM: 100 }, 'lat'],
    [{ lat: 0, lon: 181, radiusM: 100 }, 'lon'],
    [{ lat: 0, lon: 0, radiusM: 0 }, 'radiusM'],
    [{ lat: 0, lon: 0, radiusM: MAX_ZONE_RADIUS_M + 1 }, 'radiusM'],
    [{ lat: 0, lon: 0 }, 'radiusM'],
    [{ lat: 0, lon: 0, radiusM: 100, colour: 'red' }, 'colour'],
    [{ lat: 0, lon: 0, radiusM: 100, label: '' }, 'label'],
  ])('refuses a bad circle %j, naming %s', (value, named) => {
    const r = parse([{ field: 'privacyZones.home', value, hlc: `${NOW}:0:phone-1` }])
    expect(r.ok).toBe(false)
    if (r.ok) return
    expect(r.reason).toBe('bad_payload')
    expect(r.detail).toContain(named)
  })

  it('refuses a zone id outside [A-Za-z0-9_-]{1,64}', () => {
    const r = parse([{ field: 'privacyZones.my home', value: null, hlc: `${NOW}:0:phone-1` }])
    expect(r.ok).toBe(false)
  })
})
