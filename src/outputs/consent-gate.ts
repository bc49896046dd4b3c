// What the outputs ask before a person's data goes to anyone but that person: the public leaderboard, the event's
// medics. The user's own topics (alerts, live) carry their own data to themselves and need no consent. The
// implementation is ConsentService (src/ops/consent.ts); the outputs depend on this shape only.
import type { Purpose } from '../ops/consent-model.js'

export interface ConsentGate {
  /** brings users' consent into memory; allows() fails closed for a user not loaded */
  load(userIds: readonly string[]): Promise<void>
  allows(userId: string, purpose: Purpose): boolean
  /** the runner's per-event opt-in, unless they withdrew the user-level `leaderboard` purpose */
  leaderboardVisible(userId: string, participantOptIn: boolean): boolean
  /** every change, right after its commit; returns an unsubscribe */
  onChange(listener: (change: { userId: string; purpose: Purpose; granted: boolean }) => void): () => void
}
