// The MQTT.js clients the latency benches use: a tracker over mTLS with its bench certificate, and a user's app over
// WebSocket with a token in the upgrade's Authorization header. No reconnect: a lost link is a figure, not a retry.
import fs from 'node:fs'
import mqtt, { type MqttClient } from 'mqtt'
import type { Pulsegate } from '../../src/broker.js'

export function connectTracker(
  url: string,
  dev: { deviceId: string; certPath: string; keyPath: string },
  ca: Buffer,
): Promise<MqttClient> {
  return mqtt.connectAsync(url, {
    clientId: dev.deviceId,
    cert: fs.readFileSync(dev.certPath),
    key: fs.readFileSync(dev.keyPath),
    ca,
    servername: 'localhost',
    reconnectPeriod: 0,
  })
}

export async function connectApp(pg: Pulsegate, userId: string): Promise<MqttClient> {
  const token = await pg.tokens.sign({ sub: userId, role: 'app', ttl: 3600 })
  return mqtt.connectAsync(`ws://127.0.0.1:${pg.ports.http}/mqtt`, {
    clientId: `app:${userId}`,
    wsOptions: { headers: { Authorization: `Bearer ${token}` } },
    reconnectPeriod: 0,
  })
}

/** The readings that open a spo2_low alert (four low minutes ending now) and then resolve it (one normal reading). */
export function spo2LowEpisode(now: number): { opened: object[]; resolved: object[] } {
  return {
    opened: [0, 30, 60, 90].map((s) => ({ t: now - 90_000 + s * 1000, spo2: 87 })),
    resolved: [{ t: now + 1000, spo2: 96 }],
  }
}
