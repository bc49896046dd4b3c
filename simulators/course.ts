// An event course as a polyline: a procedurally generated marathon loop of exactly 42,195 m around a centre point,
// with a gentle elevation profile. positionAt(distance) interpolates along it.

export interface LatLon {
  lat: number
  lon: number
}

export interface CoursePoint extends LatLon {
  alt: number
}

const EARTH_RADIUS_M = 6_371_008.8
const DEG = Math.PI / 180

export const MARATHON_M = 42_195
/** Brandenburg Gate; any centre works. */
export const DEFAULT_CENTER: LatLon = { lat: 52.5163, lon: 13.3777 }

export class Course {
  /** cumulative distance at each vertex, metres */
  private readonly cum: Float64Array
  readonly lengthM: number

  constructor(
    readonly name: string,
    private readonly points: readonly CoursePoint[],
  ) {
    if (points.length < 2) throw new Error('a course needs at least two points')
    this.cum = new Float64Array(points.length)
    for (let i = 1; i < points.length; i++) {
      const a = points[i - 1] as CoursePoint
      const b = points[i] as CoursePoint
      this.cum[i] = (this.cum[i - 1] as number) + distanceM(a, b)
    }
    this.lengthM = this.cum[points.length - 1] as number
  }

  get vertices(): readonly CoursePoint[] {
    return this.points
  }

  /** The point `d` metres from the start, clamped to the course. */
  positionAt(d: number): CoursePoint {
    const dist = Math.min(this.lengthM, Math.max(0, d))
    let lo = 0
    let hi = this.cum.length - 1
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1
      if ((this.cum[mid] as number) <= dist) lo = mid
      else hi = mid
    }
    const a = this.points[lo] as CoursePoint
    const b = this.points[hi] as CoursePoint
    const span = (this.cum[hi] as number) - (this.cum[lo] as number)
    const f = span > 0 ? (dist - (this.cum[lo] as number)) / span : 0
    return { lat: a.lat + (b.lat - a.lat) * f, lon: a.lon + (b.lon - a.lon) * f, alt: a.alt + (b.alt - a.alt) * f }
  }
}

/** Great-circle distance in metres. */
export function distanceM(a: LatLon, b: LatLon): number {
  const dLat = (b.lat - a.lat) * DEG
  const dLon = (b.lon - a.lon) * DEG
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * DEG) * Math.cos(b.lat * DEG) * Math.sin(dLon / 2) ** 2
  return 2 * EARTH_RADIUS_M * Math.asin(Math.min(1, Math.sqrt(h)))
}

/** Moves `from` by (east, north) metres (equirectangular; fine at city scale). */
export function offsetM(from: LatLon, eastM: number, northM: number): LatLon {
  return {
    lat: from.lat + northM / EARTH_RADIUS_M / DEG,
    lon: from.lon + eastM / (EARTH_RADIUS_M * Math.cos(from.lat * DEG)) / DEG,
  }
}

/**
 * A marathon loop: a wobbly closed curve r(θ) = R·(1 + 0.22 sin 3θ + 0.08 cos 5θ) around the centre, scaled so the
 * polyline is exactly `lengthM` long, starting and finishing at the same place, rolling ±15 m of elevation.
 */
export function marathonCourse(center: LatLon = DEFAULT_CENTER, lengthM = MARATHON_M, vertices = 720): Course {
  const shape = (radius: number): CoursePoint[] => {
    const pts: CoursePoint[] = []
    for (let i = 0; i <= vertices; i++) {
      const th = (i / vertices) * 2 * Math.PI
      const r = radius * (1 + 0.22 * Math.sin(3 * th) + 0.08 * Math.cos(5 * th))
      const p = offsetM(center, r * Math.cos(th), r * Math.sin(th))
      pts.push({ ...p, alt: 0 })
    }
    return pts
  }
  // Length is proportional to R (up to the tiny curvature of the Earth): one correction pass is exact to < 1 cm.
  const probe = new Course('probe', shape(1000))
  let pts = shape((1000 * lengthM) / probe.lengthM)
  const second = new Course('probe', pts)
  pts = shape((((1000 * lengthM) / probe.lengthM) * lengthM) / second.lengthM)
  let cum = 0
  for (let i = 0; i < pts.length; i++) {
    const p = pts[i] as CoursePoint
    if (i > 0) cum += distanceM(pts[i - 1] as CoursePoint, p)
    p.alt = 34 + 12 * Math.sin((cum / lengthM) * 2 * Math.PI * 3) + 4 * Math.sin((cum / lengthM) * 2 * Math.PI * 11)
  }
  return new Course('marathon', pts)
}
