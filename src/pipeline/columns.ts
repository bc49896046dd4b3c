// The group-commit writer's flush in column form (commit.ts): what unnest() wants, with no per-row objects, and how a
// refused flush is split by batch.
import type { PositionSample, ScalarSample } from './types.js'

export interface CommitOutcome {
  /** rows of this flush that were new (the rest were duplicates of stored rows) */
  inserted: number
  rows: number
}

/** A signed batch's bookkeeping row (signed_batches, migration 0016), written in the flush that carries its samples. */
export interface BatchMark {
  seq: number
  /** epoch ms of the batch's first and last stored sample */
  firstT: number
  lastT: number
  samples: number
  encrypted: boolean
}

export interface Waiter {
  resolve(o: CommitOutcome): void
  reject(e: Error): void
  enqueuedAt: number
}

/** One flush worth of rows in column form: what unnest() wants, with no per-row objects. */
export class Columns {
  sTime: number[] = []
  sDev: number[] = []
  sMetric: number[] = []
  sValue: number[] = []
  pTime: number[] = []
  pDev: number[] = []
  pLat: number[] = []
  pLon: number[] = []
  pAlt: (number | null)[] = []
  pAcc: (number | null)[] = []
  /** signed batches' marks (signed_batches): one row per batch, not per sample */
  bDev: number[] = []
  bSeq: number[] = []
  bFirst: number[] = []
  bLast: number[] = []
  bCount: number[] = []
  bEnc: boolean[] = []
  waiters: Waiter[] = []
  /** where each waiter's rows sit, so a refused flush can be split by batch */
  spans: Span[] = []
  get rows(): number {
    return this.sTime.length + this.pTime.length
  }
  add(
    deviceKey: number,
    scalars: readonly ScalarSample[],
    positions: readonly PositionSample[],
    waiter: Waiter,
    mark?: BatchMark,
  ): void {
    const s0 = this.sTime.length
    const p0 = this.pTime.length
    if (mark) {
      this.bDev.push(deviceKey)
      this.bSeq.push(mark.seq)
      this.bFirst.push(mark.firstT)
      this.bLast.push(mark.lastT)
      this.bCount.push(mark.samples)
      this.bEnc.push(mark.encrypted)
    }
    for (const s of scalars) {
      this.sTime.push(s.t)
      this.sDev.push(deviceKey)
      this.sMetric.push(s.metric)
      this.sValue.push(s.value)
    }
    for (const p of positions) {
      this.pTime.push(p.t)
      this.pDev.push(deviceKey)
      this.pLat.push(p.lat)
      this.pLon.push(p.lon)
      this.pAlt.push(p.alt)
      this.pAcc.push(p.acc)
    }
    this.spans.push({ s0, s1: this.sTime.length, p0, p1: this.pTime.length, mark })
    this.waiters.push(waiter)
  }
}

/** Splits a merged flush in two halves by waiter; each waiter's rows are contiguous (its span). */
export function splitColumns(cols: Columns): Columns[] {
  if (cols.waiters.length < 2) return [cols]
  const mid = Math.floor(cols.waiters.length / 2)
  return [slice(cols, 0, mid), slice(cols, mid, cols.waiters.length)]
}

export interface Span {
  s0: number
  s1: number
  p0: number
  p1: number
  mark: BatchMark | undefined
}

function slice(cols: Columns, from: number, to: number): Columns {
  const out = new Columns()
  for (let i = from; i < to; i++) {
    const sp = cols.spans[i] as Span
    const scalars: ScalarSample[] = []
    const positions: PositionSample[] = []
    for (let k = sp.s0; k < sp.s1; k++) {
      scalars.push({ t: cols.sTime[k] as number, metric: cols.sMetric[k] as number, value: cols.sValue[k] as number })
    }
    for (let k = sp.p0; k < sp.p1; k++) {
      positions.push({
        t: cols.pTime[k] as number,
        lat: cols.pLat[k] as number,
        lon: cols.pLon[k] as number,
        alt: cols.pAlt[k] ?? null,
        acc: cols.pAcc[k] ?? null,
      })
    }
    const dev = (sp.s1 > sp.s0 ? cols.sDev[sp.s0] : cols.pDev[sp.p0]) as number
    out.add(dev, scalars, positions, cols.waiters[i] as Waiter, sp.mark)
  }
  return out
}
