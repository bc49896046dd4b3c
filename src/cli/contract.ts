// `pulsegate contract asyncapi [--out file]`: the AsyncAPI document of the topics and payloads (src/topics/asyncapi.ts),
// generated from the zod schemas the broker validates and builds with; docs/asyncapi.yaml is its checked-in output.
import fs from 'node:fs'
import type { Command } from 'commander'
import { asyncApiYaml } from '../topics/asyncapi.js'

export function addContractCommands(program: Command): void {
  const contract = program.command('contract').description('the machine-readable contract (topics, payloads)')
  contract
    .command('asyncapi')
    .description('print (or write) the AsyncAPI 3 document of every topic and its payload schema')
    .option('--out <file>', 'write it to this file instead of stdout (e.g. docs/asyncapi.yaml)')
    .action((opts: { out?: string }) => {
      const text = asyncApiYaml()
      if (opts.out) {
        fs.writeFileSync(opts.out, text)
        console.log(`wrote ${opts.out}`)
      } else process.stdout.write(text)
    })
}
