// The metric names a PromQL expression reads, for checking dashboards and alert rules against a real /metrics.
// Not a full PromQL parser: strings, label matchers, ranges and grouping clauses are removed, then every identifier
// that is not a function call, an aggregation keyword or an operator word is a metric name.
const WORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'and',
  'or',
  'unless',
  'bool',
  'offset',
  'inf',
  'nan',
])

export function metricNames(expr: string): string[] {
  let s = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""')
  s = s.replace(/\{[^}]*\}/g, ' ')
  s = s.replace(/\[[^\]]*\]/g, ' ')
  s = s.replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ')
  const names = new Set<string>()
  for (const m of s.matchAll(/(?<![\w.:])[A-Za-z_:][\w:]*/g)) {
    const name = m[0]
    const after = s.slice((m.index ?? 0) + name.length).trimStart()
    if (after.startsWith('(')) continue // a function or an aggregation
    if (WORDS.has(name.toLowerCase())) continue
    names.add(name)
  }
  return [...names]
}

/** Every series name a /metrics text can have: each family, and for histograms and summaries their suffixed series. */
export function exposedNames(metricsText: string): Set<string> {
  const out = new Set<string>()
  for (const line of metricsText.split('\n')) {
    const m = /^# TYPE (\S+) (\S+)/.exec(line)
    if (!m) continue
    const [, name, type] = m as unknown as [string, string, string]
    out.add(name)
    if (type === 'histogram') for (const s of ['_bucket', '_sum', '_count']) out.add(name + s)
    if (type === 'summary') for (const s of ['_sum', '_count']) out.add(name + s)
  }
  return out
}
