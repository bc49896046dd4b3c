// docs/asyncapi.yaml cannot rot: it is the generator's output (pulsegate contract asyncapi), @asyncapi/parser accepts
// it without a diagnostic, it lists exactly the grammar's topics, and its schemas accept what the code sends.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Parser } from '@asyncapi/parser'
import { parse } from 'yaml'
import { describe, expect, it } from 'vitest'
import { asyncApiYaml, TOPICS, topicDrift } from '../../src/topics/asyncapi.js'
import { parseTopic, topicFor, topicTemplates } from '../../src/topics/grammar.js'
import { decodeBatch } from '../../src/pipeline/decode.js'
import { DEFAULT_RULES, validateBatch } from '../../src/pipeline/validate.js'
import { readingsBatchSchema } from '../../src/pipeline/wire.js'
import { runCli } from '../helpers/cli.js'

const root = fileURLToPath(new URL('../..', import.meta.url))
const checkedIn = () => fs.readFileSync(path.join(root, 'docs/asyncapi.yaml'), 'utf8')

describe('docs/asyncapi.yaml', () => {
  it('is exactly what `pulsegate contract asyncapi` writes', async () => {
    expect(checkedIn()).toBe(asyncApiYaml())
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'pulsegate-asyncapi-')), 'asyncapi.yaml')
    const r = await runCli('contract', 'asyncapi', '--out', out)
    expect(r.code).toBe(0)
    expect(fs.readFileSync(out, 'utf8')).toBe(checkedIn())
    fs.rmSync(path.dirname(out), { recursive: true })
  })

  it('parses and validates with @asyncapi/parser: no diagnostics at all', async () => {
    const { document, diagnostics } = await new Parser().parse(checkedIn())
    expect(diagnostics.map((d) => `${d.code}: ${d.message} at ${d.path.join('.')}`)).toEqual([])
    expect(document).toBeDefined()
    // Every channel has its operation, messages and (for templated addresses) parameters.
    const channels = document?.channels().all() ?? []
    expect(channels.length).toBe(TOPICS.length)
    for (const c of channels) {
      expect(c.operations().length, c.address() ?? '').toBe(1)
      expect(c.messages().length, c.address() ?? '').toBeGreaterThan(0)
      for (const m of c.messages()) {
        const p = m.payload()
        expect(p?.type() ?? p?.anyOf(), `${c.address()} ${m.id()}`).toBeDefined()
      }
    }
  })

  it('lists every topic of src/topics/grammar.ts and no other', () => {
    expect(topicDrift()).toEqual({ undocumented: [], unknown: [] })
    const doc = parse(checkedIn()) as { channels: Record<string, { address: string }> }
    const addresses = Object.values(doc.channels).map((c) => c.address)
    expect(new Set(addresses)).toEqual(new Set(topicTemplates()))
    expect(addresses.length).toBe(topicTemplates().length)
    // Each address, its parameter filled in, is a topic the grammar accepts; and every topicFor builder is listed.
    for (const a of addresses) expect(parseTopic(a.replace(/\{\w+\}/, 'x1')), a).not.toBeNull()
    for (const build of Object.values(topicFor)) {
      const concrete = build('x1')
      expect(
        addresses.map((a) => a.replace(/\{\w+\}/, 'x1')),
        concrete,
      ).toContain(concrete)
    }
  })

  it('describes readings as CBOR and JSON with the schema of a batch', () => {
    const doc = parse(checkedIn()) as {
      components: { messages: Record<string, { contentType: string; payload: { $ref: string } }> }
    }
    expect(doc.components.messages['readingsBatchCbor']?.contentType).toBe('application/cbor')
    expect(doc.components.messages['readingsBatchJson']?.contentType).toBe('application/json')
    expect(doc.components.messages['readingsBatchCbor']?.payload).toEqual(
      doc.components.messages['readingsBatchJson']?.payload,
    )
  })

  it('the batch schema and the validator agree on a batch and on out-of-bounds values', () => {
    const now = Date.now()
    const good = {
      seq: 3,
      samples: [
        { t: now - 1000, hr: 142 },
        { t: now - 1000, lat: 52.5, lon: 13.4, acc: 5 },
      ],
    }
    expect(readingsBatchSchema.safeParse(good).success).toBe(true)
    const v = validateBatch(
      decodeBatch(Buffer.from(JSON.stringify(good)), { maxSamples: 100 }),
      { ...DEFAULT_RULES, now },
      {},
    )
    expect(v.rejections).toEqual([])
    const bad = { seq: 3, samples: [{ t: now - 1000, hr: 400 }] }
    expect(readingsBatchSchema.safeParse(bad).success).toBe(false)
    const vb = validateBatch(
      decodeBatch(Buffer.from(JSON.stringify(bad)), { maxSamples: 100 }),
      { ...DEFAULT_RULES, now },
      {},
    )
    expect(vb.rejections[0]?.reason).toBe('out_of_range')
  })
})
