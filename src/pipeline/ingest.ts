// The readings stage pipeline: decode → validate → dedupe → commit, then answer. For QoS 1 the caller (Aedes'
// authorizePublish, which precedes the PUBACK) is released only after the batch's accepted samples are committed.
import type { BrokerConfig } from '../../broker.config.js'
import type { Logger } from '../log.js'
import type { Metrics } from '../metrics.js'
import type { Db } from '../store/db.js'
import { topicFor } from '../topics/grammar.js'
import {
  type CommitOutcome,
  type GroupCommitWriter,
  QueueFullError,
  StoreRejectedError,
  WriterClosedError,
} from './commit.js'
import { DecodeError, decodeBatch } from './decode.js'
import type { DeviceKeySource, OpenedBatch } from './envelope.js'
import { EnvelopeStage, markOf, PLAIN } from './envelope-stage.js'
import { payloadHash, SeqWindow } from './dedupe.js'
import type { PositionSample, Rejection, ScalarSample } from './types.js'
import { type DeviceStatus, deviceStatusSchema } from './wire.js'
import { type DeviceTrack, validateBatch } from './validate.js'

export interface Publisher {
  publish(topic: string, payload: string | Buffer, qos: 0 | 1, retain: boolean): void
}

/** What the outputs (alerts, live, leaderboards) receive: only rows that are committed. */
export interface CommittedBatch {
  deviceId: string
  deviceKey: number
  userId: string
  scalars: readonly ScalarSample[]
  positions: readonly PositionSample[]
}

export interface IngestSource {
  deviceId: string
  deviceKey: number
  userId: string
}

export type Done = (err?: Error | null) => void

/** Refused unacked: Aedes closes the connection without a PUBACK and the device retries after reconnecting. */
export class IngestRefusedError extends Error {}

/** Asked right before a batch is queued: true refuses it (an erasure of its user is under way: src/ops/). */
export interface IngestGate {
  refusesReadings(src: IngestSource): boolean
}

const MAX_REJECTION_MESSAGES = 32

interface DeviceState {
  /** the plausibility (speed) check's last accepted fix; distance is derived at commit (commit.ts), not here */
  track: DeviceTrack
}

export class Ingest {
  private readonly seqs = new SeqWindow()
  private readonly devices = new Map<number, DeviceState>()
  private readonly lastDeadLetter = new Map<string, number>()
  private readonly rules: BrokerConfig['ingest']
  private readonly listeners: ((b: CommittedBatch) => void)[] = []
  /** dead-letter and status writes under way (they go to the database directly, not through the writer) */
  private readonly directWrites = new Set<Promise<unknown>>()

  private readonly db: Db

  constructor(
    db: Db,
    private readonly writer: GroupCommitWriter,
    private readonly publisher: Publisher,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    config: BrokerConfig['ingest'],
    private readonly gate?: IngestGate,
  ) {
    // Device-side writes (status, dead letters) a PUBACK may wait on: the outputs lane, above sync and background.
    this.db = db.lane('outputs')
    this.rules = config
  }

  private envelopes: EnvelopeStage | null = null

  /** Signed/encrypted readings (envelope.ts): devices' keys and policies (unset: plain batches only). */
  useDeviceKeys(keys: DeviceKeySource): void {
    this.envelopes = new EnvelopeStage(keys, this.metrics, this.log)
  }

  /** Resolves once the dead-letter and status writes started before the call have finished (erasure's barrier). */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.directWrites])
  }

  /** Erasure: what is held in memory about these devices (last position, seq window, dead-letter clock) goes. */
  forget(devices: readonly { deviceKey: number; deviceId: string }[]): void {
    for (const d of devices) {
      this.devices.delete(d.deviceKey)
      this.seqs.forget(d.deviceKey)
      this.lastDeadLetter.delete(d.deviceId)
    }
  }

  /**
   * Cluster mode: the device (re)connected to this node, possibly after sending readings to another one. What this
   * process held about it may be stale, so it goes; the newest committed fix (from the database) continues the
   * speed check. Distance needs nothing here: it is derived from the committed track by the commit statement.
   */
  resumeDevice(deviceKey: number, lastFix: { t: number; lat: number; lon: number } | null): void {
    this.seqs.forget(deviceKey)
    this.devices.delete(deviceKey)
    if (lastFix) this.devices.set(deviceKey, { track: { lastPos: { ...lastFix } } })
  }

  private track<T>(write: Promise<T>): Promise<T> {
    this.directWrites.add(write)
    const untrack = () => this.directWrites.delete(write)
    write.then(untrack, untrack)
    return write
  }

  /** Refuses a batch of a user being erased: an error for QoS 1 (no PUBACK, not stored), a counted drop for QoS 0. */
  private refusedByGate(src: IngestSource, durable: boolean, done: Done): boolean {
    if (!this.gate?.refusesReadings(src)) return false
    if (durable) {
      this.metrics.refused.inc({ reason: 'erasure' })
      done(new IngestRefusedError(`device ${src.deviceId}: its user's data is being erased; nothing is accepted`))
    } else {
      this.metrics.dropped.inc({ reason: 'erasure' })
      done()
    }
    return true
  }

  /** Outputs subscribe here; they only ever see committed rows. */
  onCommitted(fn: (b: CommittedBatch) => void): void {
    this.listeners.push(fn)
  }

  private state(deviceKey: number): DeviceState {
    let s = this.devices.get(deviceKey)
    if (!s) {
      if (this.devices.size > 1_000_000) this.devices.clear()
      s = { track: {} }
      this.devices.set(deviceKey, s)
    }
    return s
  }

  handleReadings(src: IngestSource, payload: Buffer, qos: number, done: Done): void {
    const durable = qos > 0
    this.metrics.batchesReceived.inc({ qos: durable ? '1' : '0' })
    if (this.refusedByGate(src, durable, done)) return
    if (!this.envelopes) {
      this.ingestOpened(src, payload, PLAIN(payload), durable, done)
      return
    }
    this.envelopes.open(src.deviceId, payload, {
      opened: (opened) => this.ingestOpened(src, payload, opened, durable, done),
      refused: (reason, detail) => {
        this.log.info({ deviceId: src.deviceId, reason }, 'readings batch refused: envelope')
        this.rejectBatch(src, payload, reason, detail, durable, done)
      },
      unavailable: (err) => {
        // The device's keys could not be loaded (database down, wrap key missing): QoS 1 is retried, QoS 0 dropped.
        this.log.warn({ err: err.message }, 'device keys unavailable')
        if (durable) {
          this.metrics.refused.inc({ reason: 'keys_unavailable' })
          done(new IngestRefusedError('device keys unavailable; retry later'))
        } else {
          this.metrics.dropped.inc({ reason: 'keys_unavailable' })
          done()
        }
      },
    })
  }

  /** Decode → dedupe → validate → commit of an opened batch; `payload` is the bytes as received (dedupe, dead letters). */
  private ingestOpened(src: IngestSource, payload: Buffer, opened: OpenedBatch, durable: boolean, done: Done): void {
    let batch: ReturnType<typeof decodeBatch>
    try {
      batch = decodeBatch(opened.payload, { maxSamples: this.rules.maxSamplesPerBatch })
    } catch (err) {
      const reason = err instanceof DecodeError ? err.reason : 'malformed'
      this.rejectBatch(src, payload, reason, (err as Error).message, durable, done)
      return
    }
    const hash = payloadHash(payload)
    if (this.seqs.seen(src.deviceKey, batch.seq, hash)) {
      // The same bytes under the same seq were committed already: a redelivery. Ack without a round trip.
      this.metrics.duplicates.inc({ where: 'seq_window' }, batch.samples.length)
      done()
      return
    }
    const st = this.state(src.deviceKey)
    // The speed check's track moves forward in validation; a batch turned away below (queue full, QoS 0 shed) puts
    // it back, so its retry is checked against the same fix.
    const lastPos = st.track.lastPos
    const v = validateBatch(
      batch,
      {
        now: Date.now(),
        maxFutureSkewMs: this.rules.maxFutureSkewMs,
        lateWindowMs: this.rules.lateWindowMs,
        maxFootSpeedMps: this.rules.maxFootSpeedMps,
      },
      st.track,
    )
    // What the answer below needs, taken out of `batch` and `v`: the closures waiting for the commit (milliseconds,
    // thousands at once under load) then keep only these alive, not the whole decoded batch.
    const { scalars, positions, rejections } = v
    const seq = batch.seq
    const accepted = scalars.length + positions.length
    this.metrics.samplesReceived.inc(accepted + rejections.length + v.inBatchDuplicates)
    this.metrics.samplesAccepted.inc(accepted)
    if (v.inBatchDuplicates > 0) this.metrics.duplicates.inc({ where: 'batch' }, v.inBatchDuplicates)
    for (const r of rejections) this.metrics.samplesRejected.inc({ reason: r.reason })

    const answer = (outcome: CommitOutcome | null) => {
      if (rejections.length > 0) this.publishRejections(src.deviceId, rejections)
      if (durable) this.seqs.record(src.deviceKey, seq, hash)
      if (outcome && this.listeners.length > 0) {
        const all = outcome.derived.length > 0 ? [...scalars, ...outcome.derived] : scalars
        const committed: CommittedBatch = { ...src, scalars: all, positions }
        for (const l of this.listeners) {
          try {
            l(committed)
          } catch (err) {
            this.log.error({ err }, 'output listener failed')
          }
        }
      }
    }

    if (accepted === 0) {
      answer(null)
      done()
      return
    }
    if (!durable && !this.writer.hasRoom(accepted + Math.floor(this.rules.maxQueuedRows / 2))) {
      // QoS 0 may use only half of the bounded queue: a QoS 0 burst while the database is slow must never take the
      // room that QoS 1 readings (which carry a promise) need. Dropped and counted, as QoS 0 allows.
      this.metrics.dropped.inc({ reason: 'qos0_overload' })
      st.track.lastPos = lastPos
      done()
      return
    }
    let commit: Promise<CommitOutcome>
    try {
      commit = this.writer.submit(
        src.deviceKey,
        scalars,
        positions,
        opened.signed ? markOf(seq, scalars, positions, opened.encrypted) : undefined,
      )
    } catch (err) {
      st.track.lastPos = lastPos
      const reason =
        err instanceof QueueFullError ? 'queue_full' : err instanceof WriterClosedError ? 'shutting_down' : 'error'
      if (durable) {
        this.metrics.refused.inc({ reason })
        done(new IngestRefusedError(`readings not accepted now (${reason}); retry later`))
      } else {
        this.metrics.dropped.inc({ reason })
        done()
      }
      return
    }
    if (!durable) {
      // QoS 0 carries no promise: answered at once, committed in the same flushes, counted when the write fails.
      done()
      commit.then(answer, (err: Error) =>
        this.metrics.dropped.inc({ reason: err instanceof StoreRejectedError ? 'store_rejected' : 'error' }),
      )
      return
    }
    let finished = false
    const timer = setTimeout(() => {
      if (finished) return
      finished = true
      // The rows stay queued and will commit; the device retries, and the retry is a duplicate (idempotent).
      this.metrics.refused.inc({ reason: 'commit_timeout' })
      done(new IngestRefusedError('commit did not finish in time; retry'))
    }, this.rules.commitTimeoutMs)
    commit.then(
      (outcome) => {
        clearTimeout(timer)
        answer(outcome)
        if (finished) return
        finished = true
        done()
      },
      (err: Error) => {
        clearTimeout(timer)
        if (finished) return
        finished = true
        if (err instanceof StoreRejectedError) {
          // The database refuses these rows for good: keep the bytes for diagnosis and release the device.
          this.rejectBatch(src, payload, 'store_rejected', err.message, true, done)
          return
        }
        this.metrics.refused.inc({ reason: 'error' })
        done(new IngestRefusedError(err.message))
      },
    )
  }

  /** A whole batch refused: rejection message, metric and (rate-limited) dead-letter row; acked once recorded. */
  private rejectBatch(
    src: IngestSource,
    payload: Buffer,
    reason: string,
    detail: string,
    durable: boolean,
    done: Done,
  ): void {
    this.metrics.samplesRejected.inc({ reason })
    this.publishRejections(src.deviceId, [{ seq: null, reason, field: null, index: null }])
    const now = Date.now()
    const last = this.lastDeadLetter.get(src.deviceId) ?? 0
    if (last > 0 && now - last < this.rules.deadLetterIntervalMs) {
      this.metrics.deadLettered.inc({ reason: 'suppressed' })
      done()
      return
    }
    this.lastDeadLetter.set(src.deviceId, now)
    if (this.lastDeadLetter.size > 100_000) this.lastDeadLetter.clear()
    const write = this.track(
      this.db.query(
        'INSERT INTO dead_letters (device_id, topic, reason, detail, payload) VALUES ($1, $2, $3, $4, $5)',
        [src.deviceId, topicFor.readings(src.deviceId), reason, detail.slice(0, 500), payload.subarray(0, 64 * 1024)],
      ),
    ).then(() => this.metrics.deadLettered.inc({ reason }))
    if (!durable) {
      done()
      write.catch((err: Error) => this.log.warn({ err: err.message }, 'dead-letter write failed'))
      return
    }
    write.then(
      () => done(),
      (err: Error) => {
        // Not recorded: refuse the ack, the device will send it again.
        this.lastDeadLetter.delete(src.deviceId)
        done(new IngestRefusedError(`dead-letter write failed: ${err.message}`))
      },
    )
  }

  private publishRejections(deviceId: string, rejections: readonly Rejection[]): void {
    const topic = topicFor.rejections(deviceId)
    const n = Math.min(rejections.length, MAX_REJECTION_MESSAGES)
    for (let i = 0; i < n; i++) this.publisher.publish(topic, JSON.stringify(rejections[i]), 1, false)
    if (rejections.length > n) {
      const first = rejections[0] as Rejection
      const more: Rejection = {
        seq: first.seq,
        reason: 'more_rejections',
        field: null,
        index: null,
        count: rejections.length - n,
      }
      this.publisher.publish(topic, JSON.stringify(more), 1, false)
    }
  }

  /** `devices/{id}/status`: battery, firmware, buffered-sample count; the latest per device is kept. */
  handleStatus(src: IngestSource, payload: Buffer, qos: number, done: Done): void {
    if (this.refusedByGate(src, qos > 0, done)) return
    let status: DeviceStatus
    try {
      status = deviceStatusSchema.parse(JSON.parse(payload.toString('utf8')))
    } catch (err) {
      this.metrics.samplesRejected.inc({ reason: 'bad_status' })
      this.publishRejections(src.deviceId, [{ seq: null, reason: 'bad_status', field: null, index: null }])
      void err
      done()
      return
    }
    const write = this.track(
      this.db.query(
        `INSERT INTO device_status (device_key, status) VALUES ($1, $2)
         ON CONFLICT (device_key) DO UPDATE SET status = EXCLUDED.status, updated_at = now()`,
        [src.deviceKey, JSON.stringify(status)],
      ),
    )
    if (qos === 0) {
      done()
      write.catch(() => this.metrics.dropped.inc({ reason: 'status_write_failed' }))
      return
    }
    write.then(
      () => done(),
      (err: Error) => done(new IngestRefusedError(`status not stored: ${err.message}`)),
    )
  }
}
