// Exact discrete Laplace noise for counts, from a CSPRNG, in integer arithmetic only.
//
// Source: C. Canonne, G. Kamath, T. Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020
// (arXiv:2004.00010), Algorithm 1 (Bernoulli(exp(−γ)) for rational γ) and Algorithm 2 (discrete Laplace). Why not
// textbook Laplace: floating-point Laplace sampling leaks through the low bits of its output (Mironov, CCS 2012);
// these algorithms only ever compare uniform integers, so every output has exactly the intended probability.
//
// The discrete Laplace distribution with scale t/s (s, t positive integers) gives x ∈ ℤ the probability
//   P(x) = (1 − q)/(1 + q) · q^|x|,  q = e^(−s/t).
// For a count with sensitivity 1 and ε = num/den, scale 1/ε = den/num, so s = num and t = den: adding it to every cell
// of a histogram in which each person is in at most one cell is ε-differentially private (add/remove one person).
//
// Algorithm 1, Bernoulli(exp(−γ)), γ = n/d ∈ [0, 1]: K ← 1; repeat { A ← Bernoulli(γ/K); if A = 0 stop; K ← K + 1 };
//   return K odd. (P(K odd) = Σ_k (−γ)^k / k! = e^−γ.) For γ > 1: ⌊γ⌋ draws of Bernoulli(e^−1), all must be 1, then
//   one Bernoulli(exp(−(γ − ⌊γ⌋))).
// Algorithm 2, discrete Laplace(t/s): repeat {
//   U ← uniform{0, …, t−1}; D ← Bernoulli(exp(−U/t)); if D = 0 restart;
//   V ← 0; while Bernoulli(exp(−1)) { V ← V + 1 }                 (X = U + t·V is geometric: P(X) ∝ e^(−X/t))
//   Y ← ⌊(U + t·V)/s⌋; B ← Bernoulli(1/2); if B = 1 and Y = 0 restart
//   return (1 − 2B)·Y }
//
// Random bits: node:crypto's randomFillSync (the OS CSPRNG), read 64 KiB at a time, never Math.random. A uniform
// integer below n comes from rejection sampling (no modulo bias).
import crypto from 'node:crypto'
import type { Fraction } from './epsilon.js'

const TWO32 = 2 ** 32
const TWO53 = 2 ** 53

/** Uniform integers from the OS CSPRNG, buffered: one randomFillSync per 16,384 words. */
export class CryptoRandom {
  private readonly words = new Uint32Array(16_384)
  private i = this.words.length
  private bits = 0
  private nbits = 0

  /** One uniform 32-bit word (protected: a test may replay a fixed sequence; the broker only ever uses this one). */
  protected word(): number {
    if (this.i === this.words.length) {
      crypto.randomFillSync(this.words)
      this.i = 0
    }
    return this.words[this.i++] as number
  }

  /** One fair bit (32 per word). */
  bit(): number {
    if (this.nbits === 0) {
      this.bits = this.word()
      this.nbits = 32
    }
    this.nbits--
    const b = this.bits & 1
    this.bits >>>= 1
    return b
  }

  /** Uniform on {0, …, n−1}, n a positive safe integer. */
  below(n: number): number {
    if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`below(${n}): n must be a positive safe integer`)
    return this.uniform(n)
  }

  /** below() without the argument check, for the sampler's own (valid) calls. */
  uniform(n: number): number {
    if (n === 1) return 0
    if (n === 2) return this.bit()
    if (n <= TWO32) {
      // Powers of two take the low bits; otherwise reject the top TWO32 mod n values so every residue is as likely.
      if (n <= 0x80000000 && (n & (n - 1)) === 0) return this.word() & (n - 1)
      const limit = TWO32 - (TWO32 % n)
      for (;;) {
        const x = this.word()
        if (x < limit) return x % n
      }
    }
    const limit = TWO53 - (TWO53 % n)
    for (;;) {
      const x = (this.word() & 0x1fffff) * TWO32 + this.word()
      if (x < limit) return x % n
    }
  }
}

/** The generator the broker uses; tests may pass their own CryptoRandom (still the CSPRNG). */
export const defaultRandom = new CryptoRandom()

/** Bernoulli(num/den), exactly: one uniform integer below den compared with num. */
export function bernoulli(num: number, den: number, rng: CryptoRandom = defaultRandom): boolean {
  if (!Number.isSafeInteger(num) || !Number.isSafeInteger(den) || den < 1)
    throw new RangeError(`bernoulli(${num}/${den}): need integers, den ≥ 1`)
  return bern(num, den, rng)
}

function bern(num: number, den: number, rng: CryptoRandom): boolean {
  if (num <= 0) return false
  if (num >= den) return true
  return rng.uniform(den) < num
}

/** Bernoulli(exp(−n/d)) for n ≥ 0, d > 0 integers (CKS 2020, Algorithm 1). */
export function bernoulliExpNeg(n: number, d: number, rng: CryptoRandom = defaultRandom): boolean {
  if (n < 0 || d <= 0 || !Number.isSafeInteger(n) || !Number.isSafeInteger(d))
    throw new RangeError(`bernoulliExpNeg(${n}/${d}): need integers n ≥ 0, d > 0`)
  let rest = n
  while (rest > d) {
    if (!bernoulliExpNeg01(1, 1, rng)) return false
    rest -= d
  }
  return bernoulliExpNeg01(rest, d, rng)
}

function bernoulliExpNeg01(n: number, d: number, rng: CryptoRandom): boolean {
  let k = 1
  // Bernoulli(n/(d·k)); d·k stays far below 2^53 for the ε this code accepts (den ≤ 3·10⁶, k rarely above 10).
  while (bern(n, d * k, rng)) k++
  return k % 2 === 1
}

/**
 * One draw of the discrete Laplace distribution with scale t/s (CKS 2020, Algorithm 2). For noise at ε = num/den
 * pass s = num, t = den (see discreteLaplaceEps).
 */
export function discreteLaplace(s: number, t: number, rng: CryptoRandom = defaultRandom): number {
  if (!Number.isSafeInteger(s) || !Number.isSafeInteger(t) || s < 1 || t < 1)
    throw new RangeError(`discreteLaplace(${s}, ${t}): need positive integers`)
  for (;;) {
    const u = rng.uniform(t)
    if (!bernoulliExpNeg01(u, t, rng)) continue
    let v = 0
    while (bernoulliExpNeg01(1, 1, rng)) v++
    const y = Math.floor((u + t * v) / s)
    const negative = rng.bit() === 1
    if (negative && y === 0) continue
    return negative ? -y : y
  }
}

/** Noise for a count of sensitivity 1 at ε = eps.num/eps.den: discrete Laplace with scale den/num. */
export function discreteLaplaceEps(eps: Fraction, rng: CryptoRandom = defaultRandom): number {
  return discreteLaplace(eps.num, eps.den, rng)
}

/** n independent draws at ε (one per histogram cell). */
export function noiseVector(n: number, eps: Fraction, rng: CryptoRandom = defaultRandom): Int32Array {
  const out = new Int32Array(n)
  for (let i = 0; i < n; i++) out[i] = discreteLaplace(eps.num, eps.den, rng)
  return out
}

/** The counts with independent noise added to each (a histogram's cells), as integers. */
export function addNoise(counts: readonly number[], eps: Fraction, rng: CryptoRandom = defaultRandom): number[] {
  const noise = noiseVector(counts.length, eps, rng)
  return counts.map((c, i) => c + (noise[i] as number))
}

/** Exact properties of the discrete Laplace distribution at ε (q = e^−ε), for tests, docs and benches. */
export const discreteLaplaceMath = {
  pmf(x: number, eps: number): number {
    const q = Math.exp(-eps)
    return ((1 - q) / (1 + q)) * q ** Math.abs(x)
  },
  variance(eps: number): number {
    const q = Math.exp(-eps)
    return (2 * q) / (1 - q) ** 2
  },
  /** P(|X| ≥ k) for k ≥ 1 */
  tail(k: number, eps: number): number {
    const q = Math.exp(-eps)
    return (2 * q ** k) / (1 + q)
  },
}
