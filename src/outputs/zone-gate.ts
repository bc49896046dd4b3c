// What the outputs ask before a position goes to anyone but its owner: is it inside one of the owner's privacy zones
// (docs/privacy.md "Privacy zones")? Synchronous and in memory, once per published position. The implementation is
// PrivacyZoneIndex (src/ops/privacy-zones.ts); the outputs depend on this shape only, as on ConsentGate.

export interface ZoneGate {
  /** brings users' zones into memory (with their output state, before any of their positions is published) */
  load(userIds: readonly string[]): Promise<void>
  /** true: (lat, lon) is inside one of the user's zones, and goes to nobody but the user */
  withheld(userId: string, lat: number, lon: number): boolean
}

/** No zones anywhere (a broker assembled without them, unit tests). */
export const NO_ZONES: ZoneGate = {
  load: () => Promise.resolve(),
  withheld: () => false,
}
