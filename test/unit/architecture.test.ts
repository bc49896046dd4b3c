// Two rules of the developers' guide that nobody can check by eye across the tree: no import cycles (in src/,
// simulators/, bench/ and broker.config.ts; type-only imports count, since a cycle of types still means two modules
// that each need the other), and no file in src/ over 400 lines.
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import madge, { type MadgeResult } from 'madge'
import ts from 'typescript'
import { beforeAll, describe, expect, it } from 'vitest'

const root = fileURLToPath(new URL('../..', import.meta.url))
const SCANNED = ['src', 'simulators', 'bench', 'broker.config.ts']
const MAX_LINES = 400

/** The .ts files at `rel` (a file or a folder, recursively), relative to the repository root, with / separators. */
function tsFiles(rel: string): string[] {
  const abs = path.join(root, rel)
  if (fs.statSync(abs).isFile()) return [rel]
  return fs
    .readdirSync(abs, { recursive: true, encoding: 'utf8' })
    .filter((f) => f.endsWith('.ts'))
    .map((f) => path.posix.join(rel, f.split(path.sep).join('/')))
}

const read = (rel: string) => fs.readFileSync(path.join(root, rel), 'utf8')

/** The project files `rel` imports, by the TypeScript compiler's own scan: relative specifiers, `.js` → `.ts`. */
function relativeImports(rel: string): string[] {
  const { importedFiles } = ts.preProcessFile(read(rel), true, true)
  const out = new Set<string>()
  for (const { fileName } of importedFiles) {
    if (!fileName.startsWith('.')) continue
    out.add(path.posix.join(path.posix.dirname(rel), fileName.replace(/\.js$/, '.ts')))
  }
  return [...out].sort()
}

describe('import graph (madge)', () => {
  let res: MadgeResult
  beforeAll(async () => {
    res = await madge(
      SCANNED.map((p) => path.join(root, p)),
      { baseDir: root, fileExtensions: ['ts'], tsConfig: path.join(root, 'tsconfig.json') },
    )
  })

  // A graph that silently missed edges (ESM `.js` specifiers naming `.ts` files left unresolved) would have no cycles.
  it('holds every file, with every relative import resolved to its .ts file', () => {
    const graph = res.obj()
    expect(Object.keys(graph).sort()).toEqual(SCANNED.flatMap(tsFiles).sort())
    expect(res.warnings().skipped.filter((s) => s.startsWith('.') || s.startsWith('/'))).toEqual([])
    const differing = Object.entries(graph)
      .filter(([file, deps]) => JSON.stringify([...deps].sort()) !== JSON.stringify(relativeImports(file)))
      .map(([file, deps]) => `${file}: madge ${deps.join(', ')}; TypeScript ${relativeImports(file).join(', ')}`)
    expect(differing).toEqual([])
    expect(graph['src/broker.ts']).toContain('broker.config.ts')
  })

  it('has no import cycles', () => {
    expect(res.circular().map((cycle) => cycle.join(' → '))).toEqual([])
  })
})

describe(`file size: src/ files of at most ${MAX_LINES} lines`, () => {
  const lines = (rel: string) => {
    const text = read(rel)
    return text.split('\n').length - (text.endsWith('\n') ? 1 : 0)
  }
  const counts = tsFiles('src').map((f) => ({ file: f, lines: lines(f) }))

  it(`no file in src/ is over ${MAX_LINES} lines`, () => {
    expect(counts.length).toBeGreaterThan(10)
    const over = counts.filter((c) => c.lines > MAX_LINES)
    expect(over.map((c) => `${c.file}: ${c.lines} lines`)).toEqual([])
  })
})
