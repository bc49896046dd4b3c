// One pino logger for the process: JSON lines for machines, pretty output when a person is watching a TTY.
import { pino, type Logger } from 'pino'

export type { Logger }

export function createLogger(level: string, name = 'pulsegate'): Logger {
  const pretty = process.stdout.isTTY && process.env.PULSEGATE_LOG_FORMAT !== 'json'
  return pino({
    name,
    level,
    ...(pretty
      ? { transport: { target: 'pino-pretty', options: { colorize: true, translateTime: 'HH:MM:ss.l' } } }
      : {}),
  })
}
