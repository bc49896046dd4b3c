// Hybrid logical clocks (Kulkarni, Demirbas et al., "Logical Physical Clocks", OPODIS 2014): a timestamp is
// (wall ms, counter, node). `wall` stays within the clock skew of physical time, `counter` orders events that share a
// wall value, and the node id breaks the remaining ties, so any two stamps are totally ordered. The server only
// compares and bounds stamps; HlcClock is what an app (and the tests playing one) runs to stamp its edits.
import { ID_RE } from '../../topics/grammar.js'

export interface Hlc {
  /** epoch ms, the largest physical time seen */
  readonly wall: number
  /** events at the same `wall`; stored as a PostgreSQL int */
  readonly counter: number
  /** the stamping device: `[A-Za-z0-9_-]{1,64}` */
  readonly node: string
}

export const MAX_COUNTER = 0x7fffffff

/** Wire form `<wall>:<counter>:<node>`, e.g. `1764061200000:0:phone-1`. */
const HLC_RE = /^(\d{1,16}):(\d{1,10}):([A-Za-z0-9_-]{1,64})$/

export function parseHlc(text: string): Hlc | null {
  const m = HLC_RE.exec(text)
  if (!m) return null
  const wall = Number(m[1])
  const counter = Number(m[2])
  if (!Number.isSafeInteger(wall) || counter > MAX_COUNTER) return null
  return { wall, counter, node: m[3] as string }
}

export function formatHlc(h: Hlc): string {
  return `${h.wall}:${h.counter}:${h.node}`
}

/**
 * The total order: wall, then counter, then node. Node ids are ASCII (ID_RE), so JavaScript's code-unit order is
 * the byte order PostgreSQL uses for the `COLLATE "C"` node column: the store's conditional upsert agrees with this.
 */
export function compareHlc(a: Hlc, b: Hlc): number {
  if (a.wall !== b.wall) return a.wall < b.wall ? -1 : 1
  if (a.counter !== b.counter) return a.counter < b.counter ? -1 : 1
  if (a.node === b.node) return 0
  return a.node < b.node ? -1 : 1
}

export class HlcClock {
  private wall = 0
  private counter = 0

  constructor(
    readonly node: string,
    private readonly physical: () => number = Date.now,
  ) {
    if (!ID_RE.test(node)) throw new Error(`HLC node id must match ${ID_RE}: ${JSON.stringify(node)}`)
  }

  /** A local or send event: the stamp for a new edit. Strictly greater than every stamp this clock gave or saw. */
  now(): Hlc {
    const pt = this.physical()
    if (pt > this.wall) {
      this.wall = pt
      this.counter = 0
    } else {
      this.bump(this.counter + 1)
    }
    return this.current()
  }

  /** A receive event: fold in a stamp seen elsewhere (e.g. the clocks of a state message). */
  receive(remote: Hlc): Hlc {
    const pt = this.physical()
    const wall = Math.max(this.wall, remote.wall, pt)
    let counter: number
    if (wall === this.wall && wall === remote.wall) counter = Math.max(this.counter, remote.counter) + 1
    else if (wall === this.wall) counter = this.counter + 1
    else if (wall === remote.wall) counter = remote.counter + 1
    else counter = 0
    this.wall = wall
    this.bump(counter)
    return this.current()
  }

  private bump(counter: number): void {
    // 2^31 events within one millisecond of wall time means a clock far ahead of physical time: refuse, don't wrap.
    if (counter > MAX_COUNTER) throw new Error('HLC counter overflow')
    this.counter = counter
  }

  private current(): Hlc {
    return { wall: this.wall, counter: this.counter, node: this.node }
  }
}
