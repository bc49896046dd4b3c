// Lets a plain `node` child process run pulsegate's TypeScript sources (the cluster tests spawn real broker
// processes without needing `npm run build`): `node --import ./test/helpers/ts-loader.mjs entry.ts`. Imports keep
// their `.js` specifiers (ESM/NodeNext style) and resolve to the `.ts` file beside them; TypeScript's own
// transpileModule strips the types (no type check: tsc does that).
import fs from 'node:fs'
import { register } from 'node:module'
import { fileURLToPath } from 'node:url'

if (!process.env.__PULSEGATE_TS_LOADER_HOOKS) {
  process.env.__PULSEGATE_TS_LOADER_HOOKS = '1'
  register(import.meta.url, import.meta.url)
}

let ts = null

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
  ts ??= (await import('typescript')).default
  const source = fs.readFileSync(fileURLToPath(url), 'utf8')
  const out = ts.transpileModule(source, {
    fileName: fileURLToPath(url),
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2022,
      sourceMap: false,
      inlineSourceMap: true,
      verbatimModuleSyntax: false,
    },
  })
  return { format: 'module', source: out.outputText, shortCircuit: true }
}
