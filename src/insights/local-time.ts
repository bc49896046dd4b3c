// Wall-clock time in a user's IANA zone, with Intl only (DST handled by the ICU data Node ships).

export interface LocalParts {
  /** YYYY-MM-DD */
  date: string
  hour: number
  minute: number
  /** ISO weekday, 1 = Monday … 7 = Sunday */
  dow: number
}

const formats = new Map<string, Intl.DateTimeFormat>()
function format(tz: string): Intl.DateTimeFormat {
  let f = formats.get(tz)
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', {
      timeZone: tz,
      hourCycle: 'h23',
      year: 'numeric',
      month: '2-digit',
      day: '2-digit',
      hour: '2-digit',
      minute: '2-digit',
      second: '2-digit',
      weekday: 'short',
    })
    formats.set(tz, f)
  }
  return f
}

/** A zone Intl does not know falls back to UTC (the users table only holds validated names). */
export function safeZone(tz: string | null | undefined): string {
  if (!tz) return 'UTC'
  try {
    format(tz)
    return tz
  } catch {
    return 'UTC'
  }
}

const DOW: Record<string, number> = { Mon: 1, Tue: 2, Wed: 3, Thu: 4, Fri: 5, Sat: 6, Sun: 7 }

export function localParts(t: number, tz: string): LocalParts {
  const p: Record<string, string> = {}
  for (const part of format(tz).formatToParts(new Date(t))) p[part.type] = part.value
  return {
    date: `${p['year']}-${p['month']}-${p['day']}`,
    hour: Number(p['hour']),
    minute: Number(p['minute']),
    dow: DOW[p['weekday'] ?? 'Mon'] ?? 1,
  }
}

/** The zone's offset from UTC at instant t, in ms (local = utc + offset). */
export function offsetMs(t: number, tz: string): number {
  const p: Record<string, string> = {}
  for (const part of format(tz).formatToParts(new Date(t))) p[part.type] = part.value
  const asUtc = Date.UTC(
    Number(p['year']),
    Number(p['month']) - 1,
    Number(p['day']),
    Number(p['hour']),
    Number(p['minute']),
    Number(p['second']),
  )
  return asUtc - Math.floor(t / 1000) * 1000
}

/** The instant of local wall time `date` (YYYY-MM-DD) + `minutes` in tz (the later one in a DST gap or overlap). */
export function localInstant(date: string, minutes: number, tz: string): number {
  const [y, m, d] = date.split('-').map(Number) as [number, number, number]
  const wall = Date.UTC(y, m - 1, d) + minutes * 60_000
  let t = wall - offsetMs(wall, tz)
  t = wall - offsetMs(t, tz)
  return t
}

export function addDays(date: string, n: number): string {
  const [y, m, d] = date.split('-').map(Number) as [number, number, number]
  return new Date(Date.UTC(y, m - 1, d + n)).toISOString().slice(0, 10)
}

/** HH:MM → minutes after midnight */
export function hhmm(s: string): number {
  const [h, m] = s.split(':').map(Number) as [number, number]
  return h * 60 + m
}

/** Is minute-of-day `x` inside [start, end)? A window with end < start runs past midnight. */
export function inWindow(x: number, start: number, end: number): boolean {
  if (start === end) return false
  return start < end ? x >= start && x < end : x >= start || x < end
}
