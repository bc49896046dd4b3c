// The preferences store against real databases: the conditional upsert must order stamps exactly as the CRDT does
// (wall, counter, node bytewise, then the value's canonical JSON), on PostgreSQL and on the embedded PGlite, for any
// order and duplication of the edits; and two broker processes (two pg pools) merging the same user's edits at once
// must still end with the join of all of them.
import fc from 'fast-check'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  applyEntry,
  type Entry,
  entry,
  type FieldValue,
  join,
  stateMessage,
} from '../../src/insights/preferences/crdt.js'
import type { Hlc } from '../../src/insights/preferences/hlc.js'
import { PreferencesStore } from '../../src/insights/preferences/store.js'
import { createLogger } from '../../src/log.js'
import type { Db } from '../../src/store/db.js'
import { migrate } from '../../src/store/migrate.js'
import { openEmbedded } from '../../src/store/embedded.js'
import { openPostgres } from '../../src/store/postgres.js'
import pg from 'pg'
import { PG_ADMIN_URL, type StoreKind, tempDir } from '../helpers/harness.js'

const log = createLogger('silent')
// Mixed case on purpose: 'B' < 'a' bytewise, the other way round in most locales' collations.
const NODES = ['a', 'B', 'phone', 'Phone', 'watch-1']
const FIELDS = ['quietHours', 'timeZone', 'goals.steps', 'mutedRules.R6', 'mutedRules.R8']

const hlcArb: fc.Arbitrary<Hlc> = fc.record({
  wall: fc.integer({ min: 1_764_061_200_000, max: 1_764_061_200_002 }),
  counter: fc.integer({ min: 0, max: 2 }),
  node: fc.constantFrom(...NODES),
})
function valueArb(field: string): fc.Arbitrary<FieldValue> {
  if (field === 'quietHours') {
    return fc.option(fc.constantFrom({ start: '22:00', end: '07:00' }, { start: '23:30', end: '06:00' }), { nil: null })
  }
  if (field === 'timeZone') return fc.constantFrom('Europe/Berlin', 'UTC', 'America/New_York', null)
  if (field === 'goals.steps') return fc.option(fc.constantFrom(5000, 8000, 12_000), { nil: null })
  return fc.boolean()
}
const editArb = fc
  .constantFrom(...FIELDS)
  .chain((field) => fc.tuple(fc.constant(field), valueArb(field), hlcArb))
  .map(([field, value, hlc]) => ({ field, e: entry(value, hlc) }))
type Edit = { field: string; e: Entry }

/** Messages as the service sends them to the store: one entry per field (the greatest of the message). */
function asMessage(edits: readonly Edit[]): Map<string, Entry> {
  const m = new Map<string, Entry>()
  for (const { field, e } of edits) applyEntry(m, field, e)
  return m
}

const stores: StoreKind[] = ['postgres', 'embedded']

/**
 * A fresh database whose default collation is ICU en-US, where 'a' < 'B' (bytewise 'B' < 'a'): a store that left the
 * stamp's node to the database's default collation would disagree with the CRDT here (the server's own default is C).
 */
async function createEnUsDatabase(): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `pulsegate_test_${Math.random().toString(16).slice(2, 12)}`
  const admin = new pg.Client({ connectionString: PG_ADMIN_URL })
  await admin.connect()
  await admin.query(
    `CREATE DATABASE ${name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'`,
  )
  await admin.end()
  return {
    url: PG_ADMIN_URL.replace(/\/[^/]*$/, `/${name}`),
    async drop() {
      const c = new pg.Client({ connectionString: PG_ADMIN_URL })
      await c.connect()
      await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await c.end()
    },
  }
}

describe.each(stores)('preferences store on %s', (kind) => {
  let db: Db
  let drop: (() => Promise<void>) | null = null
  beforeAll(async () => {
    if (kind === 'postgres') {
      const d = await createEnUsDatabase()
      drop = d.drop
      db = openPostgres(d.url, 4, log)
    } else {
      db = await openEmbedded(tempDir(), log)
    }
    await migrate(db, log)
  }, 120_000)
  afterAll(async () => {
    await db?.close()
    await drop?.()
  })

  let user = 0
  it('stores the CRDT join of any order and duplication of the messages', async () => {
    const store = new PreferencesStore(db)
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.array(editArb, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 8 }),
        fc.infiniteStream(fc.nat()),
        async (messages, picks) => {
          const userId = `u${++user}`
          const expected = messages.map(asMessage).reduce((acc, m) => join(acc, m), new Map<string, Entry>())
          // Every message once in a random order, plus some again at random.
          const order = [...messages, ...messages.filter(() => picks.next().value % 3 === 0)]
          for (let i = order.length - 1; i > 0; i--) {
            const j = picks.next().value % (i + 1)
            ;[order[i], order[j]] = [order[j] as Edit[], order[i] as Edit[]]
          }
          const changed = new Set<string>()
          for (const m of order) for (const f of await store.merge(userId, asMessage(m))) changed.add(f)
          const stored = (await store.read([userId])).get(userId) ?? new Map()
          expect(stateMessage(userId, stored)).toEqual(stateMessage(userId, expected))
          expect([...changed].sort()).toEqual([...expected.keys()].sort())
          // Merging everything again changes no row.
          for (const m of messages) expect(await store.merge(userId, asMessage(m))).toEqual([])
        },
      ),
      { numRuns: kind === 'postgres' ? 60 : 30 },
    )
  }, 120_000)

  it('reads many users at once and erases one', async () => {
    const store = new PreferencesStore(db)
    const h = { wall: 1, counter: 0, node: 'a' }
    await store.merge('bulk-1', new Map([['timeZone', entry('UTC', h)]]))
    await store.merge('bulk-2', new Map([['goals.steps', entry(7000, h)]]))
    const got = await store.read(['bulk-1', 'bulk-2', 'bulk-none', 'bulk-1'])
    expect([...got.keys()].sort()).toEqual(['bulk-1', 'bulk-2'])
    expect(got.get('bulk-2')?.get('goals.steps')?.value).toBe(7000)
    expect(await store.erase('bulk-1')).toBe(1)
    expect((await store.read(['bulk-1'])).size).toBe(0)
  })
})

describe('preferences store: two broker processes on one PostgreSQL', () => {
  let url = ''
  let drop: (() => Promise<void>) | null = null
  let user = 0
  beforeAll(async () => {
    const d = await createEnUsDatabase()
    url = d.url
    drop = d.drop
    const db = openPostgres(url, 1, log)
    await migrate(db, log)
    await db.close()
  })
  afterAll(async () => {
    await drop?.()
  })

  it('two processes merging the same user at once converge on the join', async () => {
    const pools = [openPostgres(url, 4, log), openPostgres(url, 4, log)]
    try {
      const stores2 = pools.map((p) => new PreferencesStore(p))
      await fc.assert(
        fc.asyncProperty(
          fc.array(fc.array(editArb, { minLength: 1, maxLength: 5 }), { minLength: 4, maxLength: 24 }),
          async (messages) => {
            const userId = `c${++user}`
            const expected = messages.map(asMessage).reduce((acc, m) => join(acc, m), new Map<string, Entry>())
            // Every message to both processes, all in flight at once (up to 8 statements on the same rows).
            await Promise.all(
              messages.flatMap((m, i) => [
                (stores2[i % 2] as PreferencesStore).merge(userId, asMessage(m)),
                (stores2[(i + 1) % 2] as PreferencesStore).merge(userId, asMessage(m)),
              ]),
            )
            const stored = (await stores2[0]?.read([userId]))?.get(userId) ?? new Map()
            expect(stateMessage(userId, stored)).toEqual(stateMessage(userId, expected))
          },
        ),
        { numRuns: 40 },
      )
    } finally {
      await Promise.all(pools.map((p) => p.close()))
    }
  }, 120_000)
})
