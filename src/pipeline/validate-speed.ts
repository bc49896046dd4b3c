// Stage 2, last step: the GPS fixes that passed their field checks, in time order, against the foot-speed bound —
// within the batch and across batches (the device's track). Apart from validate.ts so each file holds one concept.
import type { PositionSample, Rejection } from './types.js'

/** Per-device state carried between batches for cross-batch plausibility (last accepted position). The caller keeps
 *  one per device; acceptPositions updates it in place. */
export interface DeviceTrack {
  lastPos?: { t: number; lat: number; lon: number }
}

/** mean Earth radius (IUGG), metres: every great-circle distance here uses it */
export const EARTH_RADIUS_M = 6_371_008.8
const DEG = Math.PI / 180

/** Great-circle distance in metres (mean Earth radius). */
export function haversineMeters(lat1: number, lon1: number, lat2: number, lon2: number): number {
  const dLat = (lat2 - lat1) * DEG
  const dLon = (lon2 - lon1) * DEG
  const s1 = Math.sin(dLat / 2)
  const s2 = Math.sin(dLon / 2)
  const a = s1 * s1 + Math.cos(lat1 * DEG) * Math.cos(lat2 * DEG) * s2 * s2
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(a)))
}

/** Speed plausibility in ascending t; returns the number of in-batch duplicate positions dropped. */
export function acceptPositions(
  cands: PositionSample[],
  candIdx: number[],
  sorted: boolean,
  seq: number,
  maxSpeed: number,
  track: DeviceTrack,
  positions: PositionSample[],
  rejections: Rejection[],
): number {
  let order: number[] | undefined
  if (!sorted) {
    // Array.prototype.sort is stable, so equal t keep sample order ("keep the first").
    order = cands.map((_, k) => k).sort((a, b) => cands[a]!.t - cands[b]!.t)
  }
  const last = track.lastPos
  let hasPrev = last !== undefined
  let prevT = last !== undefined ? last.t : 0
  let prevLat = last !== undefined ? last.lat : 0
  let prevLon = last !== undefined ? last.lon : 0
  let moved = false
  let newestInBatch = Number.NEGATIVE_INFINITY
  let duplicates = 0

  for (let k = 0; k < cands.length; k++) {
    const c = order === undefined ? k : order[k]!
    const p = cands[c]!
    if (p.t === newestInBatch) {
      duplicates++
      continue
    }
    if (hasPrev && p.t > prevT) {
      const meters = haversineMeters(prevLat, prevLon, p.lat, p.lon)
      if (meters > (maxSpeed * (p.t - prevT)) / 1000) {
        rejections.push({ seq, reason: 'implausible_speed', field: 'lat', index: candIdx[c]! })
        continue
      }
    }
    positions.push(p)
    newestInBatch = p.t
    if (!hasPrev || p.t > prevT) {
      hasPrev = true
      prevT = p.t
      prevLat = p.lat
      prevLon = p.lon
      moved = true
    }
  }
  if (moved) track.lastPos = { t: prevT, lat: prevLat, lon: prevLon }
  return duplicates
}
