// Reading /metrics text in tests: every series carries labels of its own plus the `node` label, so tests ask for
// the labels they mean instead of matching the text.

/** A metric's value in a /metrics text (the sum over its label sets that contain `labels`). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue
    sum += Number(line.slice(line.lastIndexOf(' ') + 1))
  }
  return sum
}
