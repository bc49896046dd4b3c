// The person wearing the tracker: heart rate with zones, drift and age, SpO2, cadence and steps, what they are doing
// (a marathon runner with a pace, walking breaks and maybe a drop-out; or a day of ordinary life), and injected
// anomalies. Devices sample this; several devices of one user share one Wearer, so they agree on the heart.
import type { AlertKind } from '../src/outputs/payloads.js'
import { DEFAULT_RULES } from '../src/outputs/rules.js'

/** Small, fast, seedable PRNG (mulberry32) so a swarm is reproducible from its seed. */
export class Rng {
  private s: number
  constructor(seed: number) {
    this.s = seed >>> 0 || 0x9e3779b9
  }
  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0
    let t = this.s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
  range(min: number, max: number): number {
    return min + (max - min) * this.next()
  }
  int(min: number, max: number): number {
    return Math.floor(this.range(min, max + 1))
  }
  chance(p: number): boolean {
    return this.next() < p
  }
  normal(mean = 0, sd = 1): number {
    const u = 1 - this.next()
    const v = this.next()
    return mean + sd * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v)
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)] as T
  }
}

/** FNV-1a over the parts: a stable seed per (swarm seed, user, device …). */
export function hashSeed(...parts: (string | number)[]): number {
  let h = 0x811c9dc5
  for (const ch of parts.join('\u0000')) {
    h ^= ch.charCodeAt(0)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v))

export interface Profile {
  age: number
  restingHr: number
  /** Tanaka: 208 − 0.7·age, what the alert engine predicts too */
  maxHr: number
  /** 0 (untrained) … 1 (elite): lower resting HR, faster pace, less drift */
  fitness: number
}

export function predictedMaxHr(age: number): number {
  return Math.round(208 - 0.7 * age)
}

export function randomProfile(rng: Rng): Profile {
  const age = clamp(Math.round(rng.normal(40, 11)), 18, 80)
  const fitness = clamp(rng.normal(0.5, 0.2), 0, 1)
  const restingHr = Math.round(clamp(rng.normal(72 - 22 * fitness, 5), 42, 90))
  return { age, restingHr, maxHr: predictedMaxHr(age), fitness }
}

/** Zone 1–5 by percent of max HR (50–60, 60–70, 70–80, 80–90, 90+), null below 50 %: as in LiveSnapshot. */
export function hrZone(hr: number, maxHr: number): number | null {
  const pct = hr / maxHr
  if (pct < 0.5) return null
  return Math.min(5, Math.floor((pct - 0.5) * 10) + 1)
}

export type Activity = 'rest' | 'walk' | 'run' | 'stopped'

/** Anomalies a share of wearers suffer mid-run, so the alert path can be checked end to end. */
export type AnomalyKind =
  | 'cardiac' // stops moving, HR collapses or races far above max (race: stopped_abnormal)
  | 'sensor_loss' // HR signal gone while GPS says moving (the primary device only)
  | 'spo2_low' // sustained SpO2 in the mid-80s
  | 'hr_high_rest' // wellness: HR ~140 while sitting still

export const ANOMALY_KINDS: Record<'marathon' | 'wellness', readonly AnomalyKind[]> = {
  marathon: ['cardiac', 'sensor_loss', 'spo2_low'],
  // No sensor_loss: wellness devices have no GPS, so nothing says "moving" and the broker rightly stays quiet.
  wellness: ['hr_high_rest', 'spo2_low', 'cardiac'],
}

/**
 * Seconds from an anomaly's onset until the broker's default rules (src/outputs/rules.ts) have seen it: the rule's
 * own time plus how long the body takes to get there, with slack over the slowest of the seeds played through the
 * rules in test/unit/anomaly-lead.test.ts. A run that ends sooner after the onset cannot alert it, so the swarm does
 * not inject it there (Infinity: never alertable in that scenario).
 */
export function anomalyLeadS(kind: AnomalyKind, scenario: 'marathon' | 'wellness', brady: boolean): number {
  const r = DEFAULT_RULES
  switch (kind) {
    case 'sensor_loss':
      return scenario === 'marathon' ? r.hrMissingMs / 1000 + 5 : Number.POSITIVE_INFINITY
    case 'spo2_low':
      return r.spo2SustainedMs / 1000 + 30 // SpO2 falls with τ 15 s: under 90 % after 15–25 s
    case 'cardiac':
      if (!brady) return r.maxHrSustainedMs / 1000 + 25 // HR races past the personal max within ~10 s
      // a race sees the collapse (stopped + HR < 40); elsewhere only the 10-minute low-HR rule does
      return scenario === 'marathon' ? r.stoppedMs / 1000 + 10 : r.sustainedMs / 1000 + 60
    case 'hr_high_rest':
      return r.sustainedMs / 1000 + 60
  }
}

/** The alert kinds that count as "this anomaly was noticed". */
export const EXPECTED_ALERTS: Record<AnomalyKind, readonly AlertKind[]> = {
  cardiac: ['stopped_abnormal', 'hr_above_max', 'hr_low', 'hr_high'],
  sensor_loss: ['sensor_lost', 'stopped_abnormal'],
  spo2_low: ['spo2_low'],
  hr_high_rest: ['hr_high'],
}

export interface AnomalyPlan {
  kind: AnomalyKind
  /** cardiac only: bradycardia (true) or racing far above the max; chosen by the plan so its lead time is known */
  brady?: boolean
  /** epoch ms when it starts; it lasts until the end of the run */
  atMs: number
}

export interface RunnerPlan {
  /** running pace, s/km */
  paceSPerKm: number
  /** Galloway-style run/walk: walk forS every everyS of running; null = runs throughout */
  walkBreaks: { everyS: number; forS: number } | null
  /** epoch ms when the runner gives up (walks a little, then stops), null = keeps going */
  dropOutAtMs: number | null
  /** epoch ms the runner crossed the start line (wave starts) */
  startedAtMs: number
}

export function randomRunnerPlan(
  rng: Rng,
  profile: Profile,
  raceStartMs: number,
  window: { fromMs: number; toMs: number },
  dropOutShare: number,
): RunnerPlan {
  // 3:00 h … 6:00 h marathons, faster for the fitter.
  const paceSPerKm = clamp(rng.normal(420 - 170 * profile.fitness, 25), 215, 520)
  const walkBreaks = paceSPerKm > 330 && rng.chance(0.6) ? { everyS: rng.int(240, 600), forS: rng.int(30, 75) } : null
  const dropOutAtMs = rng.chance(dropOutShare) ? rng.range(window.fromMs, window.toMs) : null
  return { paceSPerKm, walkBreaks, dropOutAtMs, startedAtMs: raceStartMs + rng.range(0, 900_000) }
}

export interface WearerState {
  t: number
  activity: Activity
  /** m/s along the course (marathon) */
  speedMps: number
  distanceM: number
  hr: number
  spo2: number
  cadence: number
  skinTemp: number
  resp: number
  /** an anomaly is under way */
  anomaly: AnomalyKind | null
}

/**
 * One person, advanced in small steps of wall time. Heart rate follows a target (Karvonen: resting + intensity ·
 * reserve, plus cardiac drift during long exercise) with a first-order lag, so it rises and settles like a real one.
 */
export class Wearer {
  readonly state: WearerState
  private readonly rng: Rng
  private exerciseS = 0
  private walkUntil = 0
  private runSince = 0
  private droppedAt: number | null = null
  private nextActivityChange = 0
  /** cardiac anomaly: half collapse to bradycardia, half race far above the predicted max */
  private readonly cardiacBrady: boolean

  constructor(
    readonly profile: Profile,
    readonly scenario: 'marathon' | 'wellness',
    seed: number,
    startMs: number,
    readonly runner: RunnerPlan | null,
    readonly anomaly: AnomalyPlan | null,
    readonly courseLengthM: number,
  ) {
    this.rng = new Rng(seed)
    // Drawn either way, so that the plan's choice leaves the rest of this wearer's randomness as it was.
    const brady = this.rng.chance(0.5)
    this.cardiacBrady = anomaly?.brady ?? brady
    const running = scenario === 'marathon' && runner !== null && startMs >= runner.startedAtMs
    // Runners already on the course: distance so far at their average speed, HR settled at race effort.
    let distanceM = 0
    if (running && runner) {
      const elapsedS = (startMs - runner.startedAtMs) / 1000
      const walkShare = runner.walkBreaks
        ? runner.walkBreaks.forS / (runner.walkBreaks.everyS + runner.walkBreaks.forS)
        : 0
      const avg = (1000 / runner.paceSPerKm) * (1 - walkShare) + 1.4 * walkShare
      distanceM = Math.min(courseLengthM, elapsedS * avg)
      this.exerciseS = elapsedS
      this.runSince = startMs - this.rng.range(0, (runner.walkBreaks?.everyS ?? 600) * 1000)
    }
    const activity: Activity = running ? 'run' : 'rest'
    const intensity = this.intensity(activity, running && runner ? 1000 / runner.paceSPerKm : 0)
    this.state = {
      t: startMs,
      activity,
      speedMps: running && runner ? 1000 / runner.paceSPerKm : 0,
      distanceM,
      hr: this.targetHr(intensity) + this.rng.normal(0, 3),
      spo2: clamp(this.rng.normal(97.5, 0.8), 94, 100),
      cadence: 0,
      skinTemp: clamp(this.rng.normal(running ? 31.5 : 33, 0.6), 28, 36),
      resp: running ? 30 : 14,
      anomaly: null,
    }
    this.nextActivityChange = startMs + this.rng.range(30_000, 300_000)
  }

  /** Exercise intensity 0…1 (fraction of HR reserve). */
  private intensity(activity: Activity, speedMps: number): number {
    switch (activity) {
      case 'rest':
        return 0.04
      case 'stopped':
        return 0.15
      case 'walk':
        return 0.28
      case 'run': {
        // Marathon effort: 65–88 % of reserve, harder for a pace closer to the runner's limit.
        const limit = 3.2 + 2.6 * this.profile.fitness
        return clamp(0.55 + 0.35 * (speedMps / limit), 0.5, 0.92)
      }
    }
  }

  private targetHr(intensity: number): number {
    const p = this.profile
    // Cardiac drift: a few bpm per half hour of exercise, less for the fit, capped.
    const drift = Math.min(15, (this.exerciseS / 1800) * (5 - 3 * p.fitness))
    return p.restingHr + intensity * (p.maxHr - p.restingHr) + drift
  }

  /** Advances the person to wall time t (ms) in steps of at most a second. */
  advanceTo(t: number): WearerState {
    const s = this.state
    while (s.t < t) {
      const dtMs = Math.min(1000, t - s.t)
      this.step(s.t + dtMs, dtMs / 1000)
    }
    return s
  }

  private step(now: number, dt: number): void {
    const s = this.state
    s.t = now
    const anomaly = this.anomaly && now >= this.anomaly.atMs ? this.anomaly.kind : null
    s.anomaly = anomaly
    if (this.scenario === 'marathon') this.stepRunner(now)
    else this.stepDay(now)

    if (anomaly === 'cardiac') {
      s.activity = 'stopped'
      s.speedMps = 0
    }
    if (s.activity === 'run' || s.activity === 'walk') this.exerciseS += dt
    s.distanceM = Math.min(this.courseLengthM, s.distanceM + s.speedMps * dt)

    let target = this.targetHr(this.intensity(s.activity, s.speedMps))
    if (anomaly === 'cardiac') target = this.cardiacHr()
    if (anomaly === 'hr_high_rest') target = 138 + (this.profile.restingHr - 60) / 2
    // HR approaches its target with ~25 s time constant, beat-to-beat noise on top.
    const tau = anomaly === 'cardiac' ? 6 : 25
    s.hr = clamp(s.hr + (target - s.hr) * (1 - Math.exp(-dt / tau)) + this.rng.normal(0, 0.8 * Math.sqrt(dt)), 28, 245)

    const spo2Target = anomaly === 'spo2_low' ? 85 : s.activity === 'run' ? 96.5 : 97.5
    s.spo2 = clamp(s.spo2 + (spo2Target - s.spo2) * (1 - Math.exp(-dt / 15)) + this.rng.normal(0, 0.3), 60, 100)
    const cadenceTarget =
      s.activity === 'run'
        ? 150 + 30 * clamp(s.speedMps / 5, 0.4, 1.1)
        : s.activity === 'walk'
          ? 105 + 10 * this.profile.fitness
          : 0
    s.cadence = s.cadence + (cadenceTarget - s.cadence) * (1 - Math.exp(-dt / 3))
    const tempTarget = s.activity === 'run' ? 31 : s.activity === 'walk' ? 32.2 : 33.3
    s.skinTemp = s.skinTemp + (tempTarget - s.skinTemp) * (1 - Math.exp(-dt / 300)) + this.rng.normal(0, 0.01)
    const respTarget = 12 + 30 * ((s.hr - this.profile.restingHr) / (this.profile.maxHr - this.profile.restingHr))
    s.resp = clamp(s.resp + (respTarget - s.resp) * (1 - Math.exp(-dt / 10)), 6, 60)
  }

  private cardiacHr(): number {
    return this.cardiacBrady ? 34 : Math.min(240, this.profile.maxHr + 25)
  }

  private stepRunner(now: number): void {
    const s = this.state
    const r = this.runner
    if (!r || now < r.startedAtMs) {
      s.activity = 'rest'
      s.speedMps = 0
      return
    }
    if (s.distanceM >= this.courseLengthM) {
      // Finished: a slow walk through the finish area, then standing.
      s.activity = s.activity === 'run' ? 'walk' : s.activity
      s.speedMps = 0
      if (s.activity === 'walk' && this.rng.chance(0.01)) s.activity = 'stopped'
      return
    }
    if (r.dropOutAtMs !== null && now >= r.dropOutAtMs) {
      this.droppedAt ??= now
      const walking = now - this.droppedAt < 120_000
      s.activity = walking ? 'walk' : 'stopped'
      s.speedMps = walking ? 1.2 : 0
      return
    }
    if (r.walkBreaks) {
      if (s.activity === 'walk' && now >= this.walkUntil) {
        s.activity = 'run'
        this.runSince = now
      } else if (s.activity === 'run' && now - this.runSince >= r.walkBreaks.everyS * 1000) {
        s.activity = 'walk'
        this.walkUntil = now + r.walkBreaks.forS * 1000
      }
      if (s.activity !== 'walk') s.activity = 'run'
    } else {
      s.activity = 'run'
    }
    // Pace wanders ±4 % and slows with fatigue after 30 km.
    const fatigue = s.distanceM > 30_000 ? 1 + ((s.distanceM - 30_000) / 12_195) * 0.12 * (1 - this.profile.fitness) : 1
    const base = 1000 / (r.paceSPerKm * fatigue)
    s.speedMps =
      s.activity === 'walk'
        ? 1.45
        : clamp(s.speedMps + (base * (1 + this.rng.normal(0, 0.04)) - s.speedMps) * 0.2, 1.5, 6.5)
  }

  private stepDay(now: number): void {
    const s = this.state
    // Ordinary life: mostly sitting, now and then a walk of a few minutes.
    if (now >= this.nextActivityChange) {
      const walk = s.activity !== 'walk'
      s.activity = walk ? 'walk' : 'rest'
      this.nextActivityChange = now + (walk ? this.rng.range(60_000, 480_000) : this.rng.range(120_000, 900_000))
    }
    if (s.anomaly === 'hr_high_rest') s.activity = 'rest'
    s.speedMps = s.activity === 'walk' ? 1.3 : 0
  }
}
