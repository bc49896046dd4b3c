// Derived samples: distance covered between consecutive committed GPS fixes, stored as its own metric so the
// per-minute/hour rollups and leaderboards can sum it. It is derived by the statement that stores the fixes
// (commit-rows.ts), from the fixes that statement actually inserted and the device's newest committed fix
// (device_tracks, row-locked), so a batch refused and retried gets its distance exactly once: a failed statement
// derived nothing, and a retry whose fixes are already stored inserts none. Only fixes newer than the newest
// committed one move the track forward. The formula is haversineMeters' (validate-speed.ts), written in SQL there.

export const DERIVED_METRICS = { distance: 7 } as const
