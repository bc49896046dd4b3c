// What the recommendation engine (src/insights) reads of a user's synced preferences. `get` is synchronous, from an
// in-memory cache; the caller fills it for the users it is about to evaluate with the implementation's bulk
// `load(userIds)` (PreferencesService), and edits merged by this process land in it before their PUBACK.

export interface QuietHours {
  /** HH:MM local time (in timeZone); a window past midnight has end < start, e.g. 22:00–07:00 */
  start: string
  end: string
}

/** A privacy zone's circle (docs/privacy.md "Privacy zones"): positions inside are stored, never published to others. */
export interface ZoneCircle {
  /** WGS 84 degrees */
  lat: number
  lon: number
  /** metres */
  radiusM: number
  label?: string
}

export interface PrivacyZone extends ZoneCircle {
  /** the zone's id, e.g. `home` */
  id: string
}

export interface Preferences {
  quietHours?: QuietHours
  /** IANA name, e.g. Europe/Berlin */
  timeZone?: string
  /** ids of the rules muted (on any of the user's devices, and not unmuted since), sorted */
  mutedRules: string[]
  goals?: { steps?: number }
  /** the user's privacy zones by id, present only when there are any */
  privacyZones?: PrivacyZone[]
}

export interface PreferencesReader {
  /** The user's merged preferences; `{ mutedRules: [] }` for a user with none (or not loaded). */
  get(userId: string): Preferences
}
