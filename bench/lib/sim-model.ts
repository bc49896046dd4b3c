// The simulator's device model (simulators/physiology.ts, course.ts, device.ts) as a source of readings batches for
// the benchmark load generators, on a virtual clock. The swarm simulator plays devices in real time (a sample a
// second each, MQTT.js per connection) and provisions users, events and apps through pulsegate's registry, so it can
// neither saturate a broker nor be pointed at a bare Aedes or a Mosquitto; here the same Wearer → Tracker → Firmware
// chain produces the same kind of batches (hr, spo2, steps, cadence, skin temperature, respiration, GPS fixes; CBOR
// or JSON; per-device seq) as fast as the load generator asks for them. Every sample time is a real, plausible epoch
// ms: the clock of each device starts at `tStartMs` (hours in the past, inside pulsegate's late-arrival window) and
// advances by the sampling interval per sample, so consecutive fixes imply running speeds and nothing is a duplicate.
// Seeded per device: a given (seed, device index) yields byte-identical messages for every broker under test.
import { marathonCourse } from '../../simulators/course.js'
import { Firmware, Tracker } from '../../simulators/device.js'
import { hashSeed, randomProfile, randomRunnerPlan, Rng, Wearer } from '../../simulators/physiology.js'
import { type Format, type Scenario, zeroCounters } from '../../simulators/protocol.js'

export interface SimModelOptions {
  scenario: Scenario
  format: Format
  /** samples per batch (the firmware seals earlier when a sample looks anomalous) */
  batch: number
  intervalMs: number
  /** first sample time of every device (epoch ms) */
  tStartMs: number
  seed: number
}

export interface SimBatch {
  seq: number
  payload: Buffer
  samples: number
  /** readings in the batch: one per scalar metric present plus one per GPS fix (= rows pulsegate stores) */
  readings: number
  t0: number
  t1: number
}

/** One simulated tracker (a watch), producing its batches in order on demand. */
export class SimDevice {
  private readonly fw: Firmware
  private readonly counters = zeroCounters()

  constructor(
    readonly deviceId: string,
    index: number,
    o: SimModelOptions,
  ) {
    const seed = hashSeed(o.seed, 'bench-user', index)
    const rng = new Rng(seed)
    const profile = randomProfile(rng)
    // As the simulator does: the gun went off before the run; runners started in waves within 15 minutes of it.
    const raceStartMs = o.tStartMs - 1_800_000
    const course = o.scenario === 'marathon' ? sharedCourse() : null
    const runner =
      o.scenario === 'marathon'
        ? randomRunnerPlan(rng, profile, raceStartMs, { fromMs: o.tStartMs, toMs: o.tStartMs + 6 * 3_600_000 }, 0.02)
        : null
    const wearer = new Wearer(profile, o.scenario, seed, o.tStartMs, runner, null, course?.lengthM ?? 0)
    const tracker = new Tracker(wearer, 'watch', true, course, hashSeed(seed, deviceId))
    this.fw = new Firmware(
      deviceId,
      tracker,
      // No local buffer limit: every sealed batch is taken at once.
      { format: o.format, intervalMs: o.intervalMs, batchEvery: o.batch, bufferSamples: Number.MAX_SAFE_INTEGER },
      this.counters,
      o.tStartMs,
      false,
      () => undefined,
    )
  }

  /** Time of the next sample this device would take (its virtual clock). */
  get clockMs(): number {
    return this.fw.nextSampleAt
  }

  next(): SimBatch {
    let b = this.fw.take()
    while (!b) {
      // One sample per tick: tick(t) takes every sample due by t.
      this.fw.tick(this.fw.nextSampleAt)
      b = this.fw.take()
    }
    return {
      seq: b.seq,
      payload: b.payload,
      samples: b.ts.length,
      readings: b.readings,
      t0: b.ts[0] as number,
      t1: b.ts[b.ts.length - 1] as number,
    }
  }
}

let course: ReturnType<typeof marathonCourse> | null = null
function sharedCourse() {
  course ??= marathonCourse()
  return course
}
