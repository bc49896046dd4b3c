// Derived samples: distance covered between consecutive committed GPS fixes, stored as its own metric so the
// per-minute/hour rollups and leaderboards can sum it. It is derived in the commit transaction (commit.ts), from the
// fixes that transaction actually inserted and the device's newest committed fix (device_tracks, row-locked), so a
// batch refused and retried gets its distance exactly once: a rolled-back flush derived nothing, and a retry whose
// fixes are already stored inserts none. Only fixes newer than the newest committed one move the track forward.
import type { PositionSample, ScalarSample } from './types.js'
import { haversineMeters } from './validate.js'

export const DERIVED_METRICS = { distance: 7 } as const

export interface DistanceTrack {
  last?: { t: number; lat: number; lon: number }
}

/** A fix and who it belongs to (the index of the batch in a flush), so derived rows go back to that batch. */
export interface OwnedFix {
  t: number
  lat: number
  lon: number
  owner: number
}

/** One device's new fixes, in any order: segments from the track's last fix on, each handed to the fix's owner. */
export function deriveSegments(
  fixes: readonly OwnedFix[],
  track: DistanceTrack,
  emit: (owner: number, s: ScalarSample) => void,
): void {
  const sorted = fixes.length > 1 ? [...fixes].sort((a, b) => a.t - b.t) : fixes
  for (const p of sorted) {
    const last = track.last
    if (last && p.t <= last.t) continue
    if (last) {
      emit(p.owner, {
        metric: DERIVED_METRICS.distance,
        t: p.t,
        value: haversineMeters(last.lat, last.lon, p.lat, p.lon),
      })
    }
    track.last = { t: p.t, lat: p.lat, lon: p.lon }
  }
}

/** deriveSegments for one batch of one device. */
export function deriveDistance(positions: readonly PositionSample[], track: DistanceTrack, out: ScalarSample[]): void {
  deriveSegments(
    positions.map((p) => ({ t: p.t, lat: p.lat, lon: p.lon, owner: 0 })),
    track,
    (_o, s) => out.push(s),
  )
}
