// One pulsegate process of a test cluster (test/helpers/cluster.ts spawns it with `node --import ts-loader.mjs`).
// Its settings come in PULSEGATE_TEST_NODE (JSON); it prints one `PULSEGATE_READY {ports}` line once listening and
// stops cleanly on SIGTERM. SIGKILL is the crash case.
import { type BrokerConfig, type DeepPartial, ephemeralConfig } from '../../broker.config.js'
import { startPulsegate } from '../../src/broker.js'
import { createLogger } from '../../src/log.js'

interface NodeSpec {
  dataDir: string
  databaseUrl: string
  jwtSecret: string
  logLevel: BrokerConfig['logLevel']
  overrides: DeepPartial<BrokerConfig>
}

const spec = JSON.parse(process.env.PULSEGATE_TEST_NODE ?? '{}') as NodeSpec
const config = ephemeralConfig(spec, spec.overrides)
const pg = await startPulsegate(config, { log: createLogger(config.logLevel) })
// The handler before the line: a test may send SIGTERM the moment it reads it, and expects the graceful stop.
process.on('SIGTERM', () => {
  pg.stop().then(
    () => process.exit(0),
    () => process.exit(1),
  )
})
process.stdout.write(`PULSEGATE_READY ${JSON.stringify(pg.ports)}\n`)
