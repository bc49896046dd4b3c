// Readiness of the broker's Redis connection(s) for /readyz: a load balancer should stop sending new clients to a
// node whose Redis has been gone for longer than a bound (a short blip must not empty the pool). Anything with
// ioredis' `status` and connection events can be watched (the leaderboard's client today; cluster mode's later).

/** The part of an ioredis client this needs. */
export interface RedisLink {
  readonly status: string
  on(event: 'ready' | 'close' | 'end' | 'reconnecting', listener: () => void): unknown
}

export interface RedisReadinessReport {
  ok: boolean
  /** ms the longest-down connection has been down (0 when all are up) */
  downForMs: number
}

export class RedisReadiness {
  readonly #down = new Map<RedisLink, number | null>()
  constructor(
    private readonly boundMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  watch(link: RedisLink): void {
    this.#down.set(link, link.status === 'ready' ? null : this.now())
    link.on('ready', () => this.#down.set(link, null))
    const lost = () => {
      if (this.#down.get(link) == null) this.#down.set(link, this.now())
    }
    link.on('close', lost)
    link.on('end', lost)
    link.on('reconnecting', lost)
  }

  get watching(): number {
    return this.#down.size
  }

  report(): RedisReadinessReport {
    let downForMs = 0
    for (const [link, since] of this.#down) {
      // status is the truth; the events only date the outage
      if (link.status === 'ready') continue
      const t = since ?? this.now()
      if (since == null) this.#down.set(link, t)
      downForMs = Math.max(downForMs, this.now() - t)
    }
    return { ok: downForMs <= this.boundMs, downForMs }
  }
}
