// The simulator's broker lists (`--url a,b,c`): parsing, and the round-robin a connection follows from its start
// entry, one step per lost link.
import { describe, expect, it } from 'vitest'
import { pick } from '../../simulators/protocol.js'
import { urlList } from '../../simulators/swarm.js'

describe('simulator broker lists', () => {
  it('splits comma-separated lists, trims, drops empty entries, accepts arrays', () => {
    expect(urlList(undefined)).toEqual([])
    expect(urlList('mqtts://h:8883')).toEqual(['mqtts://h:8883'])
    expect(urlList(' mqtts://h:8883, mqtts://h:18883,,')).toEqual(['mqtts://h:8883', 'mqtts://h:18883'])
    expect(urlList(['ws://a/mqtt', ' ws://b/mqtt '])).toEqual(['ws://a/mqtt', 'ws://b/mqtt'])
  })

  it('spreads connections round-robin and moves each to the next entry after a loss', () => {
    const list = ['a', 'b', 'c']
    expect([0, 1, 2, 3, 4].map((i) => pick(list, i))).toEqual(['a', 'b', 'c', 'a', 'b'])
    expect([0, 1, 2, 3].map((turn) => pick(list, 1, turn))).toEqual(['b', 'c', 'a', 'b'])
    expect(pick(['only'], 7, 3)).toBe('only')
  })
})
