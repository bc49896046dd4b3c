// Derived samples: distance covered between consecutive accepted GPS fixes, stored as its own metric so the
// per-minute/hour rollups and leaderboards can sum it. Only fixes newer than the last one move the track forward, so
// a redelivered or relayed copy of old fixes derives nothing twice.
import type { PositionSample, ScalarSample } from './types.js'
import { haversineMeters } from './validate.js'

export const DERIVED_METRICS = { distance: 7 } as const

export interface DistanceTrack {
  last?: { t: number; lat: number; lon: number }
}

export function deriveDistance(positions: readonly PositionSample[], track: DistanceTrack, out: ScalarSample[]): void {
  if (positions.length === 0) return
  const sorted = positions.length > 1 ? [...positions].sort((a, b) => a.t - b.t) : positions
  for (const p of sorted) {
    const last = track.last
    if (last && p.t <= last.t) continue
    if (last) {
      out.push({ metric: DERIVED_METRICS.distance, t: p.t, value: haversineMeters(last.lat, last.lon, p.lat, p.lon) })
    }
    track.last = { t: p.t, lat: p.lat, lon: p.lon }
  }
}
