// The start banner names each listener by what it accepts: 8883 refuses a client without a device certificate in the
// TLS handshake, so it must not be offered to token clients; the token listener is listed only when it is open.
import { describe, expect, it } from 'vitest'
import { loadConfig } from '../../broker.config.js'
import { startBanner } from '../../src/cli/banner.js'

const cfg = loadConfig({ dataDir: '/tmp/pulsegate-banner' }, {})
const listeners = (mqttsToken: number | null) =>
  startBanner(cfg, { mqtt: 1884, mqtts: 8883, mqttsToken, http: 8080 }, { firstStart: false, store: 'embedded' })
    .split('\n')
    .find((l) => l.trimStart().startsWith('MQTT')) ?? ''

describe('start banner', () => {
  it('offers the devices listener for device certificates only', () => {
    const line = listeners(null)
    expect(line).toContain('mqtts://localhost:8883 (device certificate)')
    expect(line).not.toMatch(/8883 \([^)]*JWT/)
    expect(line).not.toContain('8884')
  })

  it('lists the token listener when it is enabled', () => {
    expect(listeners(8884)).toContain('mqtts://localhost:8884 (JWT, certificate optional)')
  })
})
