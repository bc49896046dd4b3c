// Lets a plain `node` child process run pulsegate's TypeScript sources (the cluster tests spawn real broker
// processes without needing `npm run build`): `node --import ./test/helpers/ts-loader.mjs entry.ts`. Imports keep
// their `.js` specifiers (ESM/NodeNext style) and resolve to the `.ts` file beside them; TypeScript's own
// transpileModule strips the types (no type check: tsc does that). The output is cached by path, size and mtime in
// the temp dir: three brokers starting at once on a loaded machine would otherwise each transpile the whole tree.
import crypto from 'node:crypto'
import fs from 'node:fs'
import { register } from 'node:module'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

if (!process.env.__PULSEGATE_TS_LOADER_HOOKS) {
  process.env.__PULSEGATE_TS_LOADER_HOOKS = '1'
  register(import.meta.url, import.meta.url)
}

let ts = null
const cacheDir = path.join(os.tmpdir(), 'pulsegate-ts-cache')

export async function resolve(specifier, context, next) {
  if (/^(\.|\/|file:)/.test(specifier) && specifier.endsWith('.js') && context.parentURL) {
    const url = new URL(specifier, context.parentURL)
    const tsUrl = new URL(url.href.replace(/\.js$/, '.ts'))
    if (url.protocol === 'file:' && !fs.existsSync(fileURLToPath(url)) && fs.existsSync(fileURLToPath(tsUrl)))
      return { url: tsUrl.href, format: 'module', shortCircuit: true }
  }
  return next(specifier, context)
}

export async function load(url, context, next) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return next(url, context)
  const file = fileURLToPath(url)
  const st = fs.statSync(file)
  const key = crypto.createHash('sha1').update(`${file}:${st.size}:${st.mtimeMs}`).digest('hex')
  const cached = path.join(cacheDir, `${key}.js`)
  if (fs.existsSync(cached)) return { format: 'module', source: fs.readFileSync(cached, 'utf8'), shortCircuit: true }
  ts ??= (await import('typescript')).default
  const source = fs.readFileSync(file, 'utf8')
  const out = ts.transpileModule(source, {
    fileName: file,
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      sourceMap: false,
      inlineSourceMap: true,
      verbatimModuleSyntax: false,
    },
  })
  fs.mkdirSync(cacheDir, { recursive: true })
  // Written under a unique name, then renamed: a concurrent reader never sees half a file.
  const tmp = `${cached}.${process.pid}.${crypto.randomBytes(4).toString('hex')}`
  fs.writeFileSync(tmp, out.outputText)
  fs.renameSync(tmp, cached)
  return { format: 'module', source: out.outputText, shortCircuit: true }
}
