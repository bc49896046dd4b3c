// The preferences service's counters, on the broker's registry (Metrics.registry), so /metrics shows them.
import { Counter, type Registry } from 'prom-client'

export function createPreferencesMetrics(registry: Registry) {
  const registers = [registry]
  return {
    edits: new Counter({
      name: 'pulsegate_preferences_edits_total',
      help: 'preference edits merged: applied (won its field) or stale (a duplicate, or older than the stored one)',
      labelNames: ['outcome'],
      registers,
    }),
    refused: new Counter({
      name: 'pulsegate_preferences_refused_total',
      help: 'preferences messages refused whole, nothing stored: bad_payload or clock_ahead (HLC too far in the future)',
      labelNames: ['reason'],
      registers,
    }),
    storeErrors: new Counter({
      name: 'pulsegate_preferences_store_errors_total',
      help: 'preferences merges the database did not take (no PUBACK: the app resends, and merging again is harmless)',
      registers,
    }),
  }
}

export type PreferencesMetrics = ReturnType<typeof createPreferencesMetrics>
