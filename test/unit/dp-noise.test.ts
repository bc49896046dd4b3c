// The discrete Laplace sampler against the exact distribution: 10⁶ draws each at ε = 0.5 and ε = 1 — mean, variance,
// tails and a chi-square goodness of fit on the central values. Bounds are 5 standard errors (or p = 10⁻⁶ for the
// chi-square): a correct sampler fails one of them about once in a million runs, and a wrong ε is caught (see the last
// check of each block, which runs the same test against a 10 % different ε and must reject it).
import fs from 'node:fs'
import { describe, expect, it } from 'vitest'
import {
  EpsilonError,
  formatEpsilon,
  fraction,
  parseEpsilon,
  parseNumeric,
  share,
} from '../../src/insights/dp/epsilon.js'
import {
  addNoise,
  bernoulliExpNeg,
  CryptoRandom,
  discreteLaplaceEps,
  discreteLaplaceMath,
  noiseVector,
} from '../../src/insights/dp/noise.js'

const N = 1_000_000
const Z = 5
/** standard normal quantile for p = 1 − 10⁻⁶ (one-sided) */
const Z_CHI = 4.753

/** Upper quantile of χ²(df) by the Wilson–Hilferty approximation (good to < 1 % for df ≥ 10; high for df = 1). */
function chiSquareCritical(df: number, z: number): number {
  const a = 2 / (9 * df)
  return df * (1 - a + z * Math.sqrt(a)) ** 3
}

function chiSquare(samples: Int32Array, eps: number, m: number): { stat: number; df: number } {
  const counts = new Map<number, number>()
  for (const x of samples) {
    const key = x < -m ? -m - 1 : x > m ? m + 1 : x
    counts.set(key, (counts.get(key) ?? 0) + 1)
  }
  let stat = 0
  for (let k = -m - 1; k <= m + 1; k++) {
    const p = Math.abs(k) > m ? discreteLaplaceMath.tail(m + 1, eps) / 2 : discreteLaplaceMath.pmf(k, eps)
    const expected = p * samples.length
    const o = counts.get(k) ?? 0
    stat += (o - expected) ** 2 / expected
  }
  return { stat, df: 2 * m + 2 }
}

/** E[X⁴] of the discrete Laplace at ε, summed until the terms vanish. */
function fourthMoment(eps: number): number {
  let s = 0
  for (let x = 1; x < 10_000; x++) s += 2 * x ** 4 * discreteLaplaceMath.pmf(x, eps)
  return s
}

describe.each([
  { label: '0.5', eps: { num: 1, den: 2 }, central: 12 },
  { label: '1', eps: { num: 1, den: 1 }, central: 8 },
])('discrete Laplace at ε = $label, 10⁶ draws', ({ eps, central }) => {
  const e = eps.num / eps.den
  const rng = new CryptoRandom()
  const started = performance.now()
  const cpu0 = process.cpuUsage()
  const xs = noiseVector(N, eps, rng)
  const cpu = process.cpuUsage(cpu0)
  const cpuMs = (cpu.user + cpu.system) / 1000
  const ms = performance.now() - started
  let sum = 0
  let sq = 0
  for (const x of xs) {
    sum += x
    sq += x * x
  }
  const mean = sum / N
  const variance = sq / N - mean * mean
  const exactVar = discreteLaplaceMath.variance(e)

  it('draws 10⁶ values in a few seconds of CPU', () => {
    console.log(`ε = ${e}: 10⁶ exact draws in ${Math.round(ms)} ms (${Math.round(cpuMs)} ms CPU)`)
    // CPU time, not wall time: other processes on a shared machine do not make it fail
    expect(cpuMs).toBeLessThan(10_000)
    expect(xs.every((x) => Number.isInteger(x))).toBe(true)
  })

  it('mean is 0 within 5 standard errors', () => {
    expect(Math.abs(mean)).toBeLessThan(Z * Math.sqrt(exactVar / N))
  })

  it('variance is 2e^−ε/(1−e^−ε)² within 5 standard errors (and 3 %)', () => {
    const se = Math.sqrt((fourthMoment(e) - exactVar ** 2) / N)
    expect(Math.abs(variance - exactVar)).toBeLessThan(Z * se)
    expect(Math.abs(variance / exactVar - 1)).toBeLessThan(0.03)
  })

  it('tails P(|X| ≥ k) = 2e^(−εk)/(1+e^−ε) within 5 standard errors', () => {
    for (const k of [1, 2, 5, 10, 15]) {
      const p = discreteLaplaceMath.tail(k, e)
      const observed = xs.reduce((n, x) => n + (Math.abs(x) >= k ? 1 : 0), 0) / N
      expect(Math.abs(observed - p), `k = ${k}`).toBeLessThan(Z * Math.sqrt((p * (1 - p)) / N))
    }
    // P(X = 0) = (1 − q)/(1 + q): the sign trick must not double the mass at 0
    const zero = xs.reduce((n, x) => n + (x === 0 ? 1 : 0), 0) / N
    const p0 = discreteLaplaceMath.pmf(0, e)
    expect(Math.abs(zero - p0)).toBeLessThan(Z * Math.sqrt((p0 * (1 - p0)) / N))
  })

  it('chi-square goodness of fit on the central values passes, and rejects a 10 % different ε', () => {
    const fit = chiSquare(xs, e, central)
    const critical = chiSquareCritical(fit.df, Z_CHI)
    expect(fit.stat).toBeLessThan(critical)
    expect(chiSquare(xs, e * 1.1, central).stat).toBeGreaterThan(critical)
  })

  it('is symmetric: as many positive as negative draws', () => {
    const pos = xs.reduce((n, x) => n + (x > 0 ? 1 : 0), 0)
    const neg = xs.reduce((n, x) => n + (x < 0 ? 1 : 0), 0)
    const p = discreteLaplaceMath.tail(1, e) / 2
    expect(Math.abs(pos - neg) / N).toBeLessThan(Z * Math.sqrt((2 * p) / N))
  })
})

describe('building blocks', () => {
  it('Bernoulli(exp(−γ)) for γ > 1 (the ⌊γ⌋ loop) and γ = 0', () => {
    const rng = new CryptoRandom()
    const n = 200_000
    let hits = 0
    for (let i = 0; i < n; i++) if (bernoulliExpNeg(5, 2, rng)) hits++
    const p = Math.exp(-2.5)
    expect(Math.abs(hits / n - p)).toBeLessThan(Z * Math.sqrt((p * (1 - p)) / n))
    expect(bernoulliExpNeg(0, 7, rng)).toBe(true)
  })

  it('CryptoRandom.below is uniform (rejection, powers of two, single bits) and stays in range past 2³²', () => {
    const rng = new CryptoRandom()
    for (const k of [7, 8, 2]) {
      const counts = new Array(k).fill(0)
      const n = 100_000 * k
      for (let i = 0; i < n; i++) counts[rng.below(k)]++
      const stat = counts.reduce((s, c) => s + (c - n / k) ** 2 / (n / k), 0)
      // (for df = 1 Wilson–Hilferty gives 27.5 where the exact 10⁻⁶ quantile is 24: conservative)
      expect(stat, `below(${k})`).toBeLessThan(chiSquareCritical(k - 1, Z_CHI))
    }
    for (let i = 0; i < 1000; i++) {
      const x = rng.below(2 ** 40 + 3)
      expect(Number.isInteger(x) && x >= 0 && x < 2 ** 40 + 3).toBe(true)
    }
    expect(() => rng.below(0)).toThrow(RangeError)
  })

  it('a split ε (the per-histogram share) gives the variance of its own scale', () => {
    const eps = share(parseEpsilon(0.5), 3) // 1/6
    expect(eps).toEqual({ num: 1, den: 6 })
    const rng = new CryptoRandom()
    const xs = noiseVector(200_000, eps, rng)
    const mean = xs.reduce((a, x) => a + x, 0) / xs.length
    const v = xs.reduce((a, x) => a + (x - mean) ** 2, 0) / xs.length
    expect(Math.abs(v / discreteLaplaceMath.variance(1 / 6) - 1)).toBeLessThan(0.05)
    expect(addNoise([100, 200], eps, rng)).toHaveLength(2)
    expect(Number.isInteger(discreteLaplaceEps(eps, rng))).toBe(true)
  })

  it('takes its randomness from node:crypto only', () => {
    const text = fs.readFileSync(new URL('../../src/insights/dp/noise.ts', import.meta.url), 'utf8')
    const src = text.replace(/\/\*[\s\S]*?\*\//g, '').replace(/\/\/.*$/gm, '') // code only, not the comments
    expect(src).not.toMatch(/Math\.random/)
    expect(src).toMatch(/randomFillSync/)
  })
})

describe('ε as exact decimals', () => {
  it('parses config values to micro-ε through their decimal text', () => {
    expect(parseEpsilon(0.5)).toBe(500_000)
    expect(parseEpsilon('0.1')).toBe(100_000)
    expect(parseEpsilon(10)).toBe(10_000_000)
    expect(parseEpsilon('1.000001')).toBe(1_000_001)
    for (const bad of ['0', '-1', '1e-7', '0.0000001', 'abc', '', '1.2.3'])
      expect(() => parseEpsilon(bad), bad).toThrow(EpsilonError)
  })

  it('formats and reads back PostgreSQL numeric text exactly', () => {
    expect(formatEpsilon(500_000)).toBe('0.5')
    expect(formatEpsilon(10_000_000)).toBe('10')
    expect(formatEpsilon(1)).toBe('0.000001')
    expect(parseNumeric('9.500000')).toBe(9_500_000)
    expect(parseNumeric('0')).toBe(0)
    expect(parseNumeric('-1.25')).toBe(-1_250_000)
    expect(() => parseNumeric('1.0000001')).toThrow(EpsilonError)
    // 0.1 + 0.2 is exactly 0.3 here, unlike in floating point
    expect(parseEpsilon('0.1') + parseEpsilon('0.2')).toBe(parseEpsilon('0.3'))
  })

  it('fractions are reduced', () => {
    expect(fraction(500_000, 1_000_000)).toEqual({ num: 1, den: 2 })
    expect(share(1_000_000, 3)).toEqual({ num: 1, den: 3 })
    expect(() => fraction(0, 1)).toThrow(EpsilonError)
  })
})
