// The docs stay inside the repository: every relative link of README.md and docs/*.md names a file or folder of this
// repository that exists (no `../shared/…`, no absolute paths of a development machine).
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../..', import.meta.url))
const docs = [
  'README.md',
  ...fs
    .readdirSync(path.join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
]

describe('documentation links', () => {
  it.each(docs)('%s links only to files of this repository that exist', (doc) => {
    const text = fs.readFileSync(path.join(root, doc), 'utf8')
    const bad: string[] = []
    for (const m of text.matchAll(/\]\(([^)\s]+)\)/g)) {
      const target = (m[1] as string).split('#')[0] as string
      if (target === '' || /^[a-z]+:/i.test(target)) continue // an anchor, or http(s)/mailto
      const resolved = path.resolve(path.dirname(path.join(root, doc)), target)
      if (!resolved.startsWith(root) || !fs.existsSync(resolved)) bad.push(target)
    }
    expect(bad).toEqual([])
    expect(text).not.toMatch(/\/work\/|\.\.\/shared|SPEC\.md/)
  })
})
