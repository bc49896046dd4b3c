// A token bucket on a caller-supplied clock (ms), so it is exact under test and costs no timer of its own.

export class TokenBucket {
  private tokens: number
  private last: number

  /** rate: tokens per second (0 = unlimited); burst: the most it saves up */
  constructor(
    readonly rate: number,
    readonly burst: number,
    now: number,
  ) {
    this.tokens = burst
    this.last = now
  }

  get unlimited(): boolean {
    return this.rate <= 0
  }

  private refill(now: number): void {
    if (now > this.last) {
      this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000)
      this.last = now
    }
  }

  /** ms until `cost` can be taken (0 = now). A cost above the burst needs a full bucket, then leaves a debt. */
  waitMs(cost: number, now: number): number {
    if (this.unlimited) return 0
    this.refill(now)
    const need = Math.min(cost, this.burst)
    if (this.tokens >= need) return 0
    return Math.ceil(((need - this.tokens) * 1000) / this.rate)
  }

  /** takes `cost` (call after waitMs said 0); the balance may go negative for packets larger than the burst */
  take(cost: number, now: number): void {
    if (this.unlimited) return
    this.refill(now)
    this.tokens -= cost
  }
}
