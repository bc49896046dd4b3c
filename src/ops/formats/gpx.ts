// GPX 1.1 (https://www.topografix.com/GPX/1/1/) for GPS tracks: one <trk> per device (its <name> is the device id),
// one <trkseg> with the device's positions in time order. Written as text a page at a time (numbers, ISO times and
// [A-Za-z0-9_-] ids: nothing to escape but the names, which are escaped anyway); read with fast-xml-parser.
import { XMLParser, XMLValidator } from 'fast-xml-parser'
import { PortabilityError } from '../errors.js'
import { type ImportItem, isoTime, jsonNumber, parseTime } from './omh.js'

export const GPX_NS = 'http://www.topografix.com/GPX/1/1'
/** pulsegate's extension elements (horizontal accuracy has no GPX 1.1 element: hdop is dimensionless) */
export const PULSEGATE_GPX_NS = 'urn:pulsegate:gpx:1'

const escapeXml = (s: string): string =>
  s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c] as string)

export function gpxOpen(userId: string, generatedAtMs: number): string {
  // metadataType order: name, desc, author, copyright, link, time, keywords, bounds, extensions.
  return (
    '<?xml version="1.0" encoding="UTF-8"?>\n' +
    `<gpx version="1.1" creator="pulsegate" xmlns="${GPX_NS}" xmlns:pg="${PULSEGATE_GPX_NS}" ` +
    `xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="${GPX_NS} ${GPX_NS}/gpx.xsd">\n` +
    `<metadata><name>${escapeXml(`pulsegate export for ${userId}`)}</name><time>${isoTime(generatedAtMs)}</time></metadata>\n`
  )
}

export const gpxTrackOpen = (deviceId: string): string => `<trk><name>${escapeXml(deviceId)}</name><trkseg>\n`
export const GPX_TRACK_CLOSE = '</trkseg></trk>\n'
export const GPX_CLOSE = '</gpx>\n'

/** A track point; wptType's order: ele, time, …, extensions. */
export function gpxPoint(tMs: number, lat: number, lon: number, alt: number | null, acc: number | null): string {
  const ele = alt === null ? '' : `<ele>${jsonNumber(alt)}</ele>`
  const ext = acc === null ? '' : `<extensions><pg:acc>${jsonNumber(acc)}</pg:acc></extensions>`
  return `<trkpt lat="${jsonNumber(lat)}" lon="${jsonNumber(lon)}">${ele}<time>${isoTime(tMs)}</time>${ext}</trkpt>\n`
}

/** GPX is parsed whole (a DOM-like tree), so its size is capped; NDJSON and CSV are read as streams. */
export const MAX_GPX_BYTES = 64 * 1024 * 1024

type Node = Record<string, unknown>
const asArray = (v: unknown): Node[] => (Array.isArray(v) ? (v as Node[]) : v === undefined ? [] : [v as Node])
const text = (v: unknown): string | undefined =>
  typeof v === 'string' ? v : typeof v === 'object' && v !== null ? text((v as Node)['#text']) : undefined
const NUMBER_RE = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/
const num = (v: unknown): unknown => {
  const s = text(v)?.trim()
  return s !== undefined && NUMBER_RE.test(s) ? Number(s) : s
}

/**
 * Track points of a GPX document as import items: lat/lon, <ele>, <time>, pulsegate's <pg:acc>, and the heart rate
 * of Garmin's TrackPointExtension (<gpxtpx:hr>) that phone and watch apps write. Route and way points are not
 * tracks and are ignored. The track's <name> names the device.
 */
export function gpxItems(xml: string): ImportItem[] {
  const valid = XMLValidator.validate(xml)
  if (valid !== true) throw new PortabilityError(`not a GPX document: ${valid.err.msg} (line ${valid.err.line})`)
  const doc = new XMLParser({
    ignoreAttributes: false,
    attributeNamePrefix: '@_',
    removeNSPrefix: true,
    parseTagValue: false,
    parseAttributeValue: false,
    // No entity expansion: a GPX has no business declaring entities, and expanding them is an attack surface.
    processEntities: false,
    isArray: (name) => name === 'trk' || name === 'trkseg' || name === 'trkpt',
  }).parse(xml) as Node
  const gpx = doc.gpx as Node | undefined
  if (typeof gpx !== 'object' || gpx === null) throw new PortabilityError('not a GPX document: no <gpx> root')
  const items: ImportItem[] = []
  for (const trk of asArray(gpx.trk)) {
    const device = text(trk.name)?.trim() || null
    for (const seg of asArray(trk.trkseg)) {
      for (const pt of asArray(seg.trkpt)) {
        const t = parseTime(text(pt.time)?.trim())
        if (t === undefined) {
          items.push({ refused: 'bad_timestamp' })
          continue
        }
        const sample: Record<string, unknown> = { t, lat: num(pt['@_lat']), lon: num(pt['@_lon']) }
        if (pt.ele !== undefined) sample.alt = num(pt.ele)
        const ext = pt.extensions as Node | undefined
        if (typeof ext === 'object' && ext !== null) {
          if (ext.acc !== undefined) sample.acc = num(ext.acc)
          const tpx = ext.TrackPointExtension as Node | undefined
          if (typeof tpx === 'object' && tpx !== null && tpx.hr !== undefined) sample.hr = num(tpx.hr)
        }
        items.push({ device, sample })
      }
    }
  }
  return items
}
