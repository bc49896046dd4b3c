// The race-control console (README "Race-control console"). Live data over MQTT/WebSocket with the medic's token
// (events/{eid}/positions, /leaderboard, /alerts: the broker's ACL and its consent and zone gates decide what
// arrives); the alert queue, the actions on it and a runner's detail over HTTP (/console/api/…, same token).
// Rendering: messages only update state maps and set dirty flags; one requestAnimationFrame loop draws from them, so
// 50,000 runners cost one pass over a typed pixel buffer per frame, whatever the message rate.
/* global mqtt */
;(() => {
  const $ = (id) => document.getElementById(id)
  const params = new URLSearchParams(location.hash.slice(1))

  // ---- state ---------------------------------------------------------------------------------------------------
  /** userId → { mx, my (Web Mercator, 0..1), t, alert } */
  const runners = new Map()
  /** alert id → the console's view of the alert (AlertActionMessage) */
  const alerts = new Map()
  const bounds = { minX: 1, minY: 1, maxX: 0, maxY: 0 }
  let board = null
  let session = null // { token, eventId, role, sub, client }
  let selected = null // runner detail: { userId, cursor, readings, timer }
  const dirty = { map: true, board: false, alerts: false }
  const view = { auto: true, ox: 0, oy: 0, scale: 1 } // screen px = (m - o) * scale
  let tileUrl = null
  const tiles = new Map()

  // Measurements the page exposes (bench/console.ts, the browser test): rAF deltas and draw times, last 2,000 frames.
  const perf = { frames: [], draws: [], drawn: 0, messages: 0, positions: 0 }
  window.__console = { perf, runners, alerts }
  const ring = (a, v) => {
    a.push(v)
    if (a.length > 2000) a.shift()
  }

  const mercX = (lon) => (lon + 180) / 360
  const mercY = (lat) => {
    const s = Math.sin((Math.max(-85, Math.min(85, lat)) * Math.PI) / 180)
    return 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI)
  }
  const pace = (s) => (s ? `${Math.floor(s / 60)}:${String(Math.round(s % 60)).padStart(2, '0')}` : '–')
  const hms = (s) => (s == null ? '–' : new Date(s * 1000).toISOString().slice(11, 19))
  const el = (tag, props = {}, ...children) => {
    const e = document.createElement(tag)
    Object.assign(e, props)
    for (const c of children) e.append(c)
    return e
  }

  function setConn(state, text) {
    const c = $('conn')
    c.dataset.state = state
    c.textContent = text
  }

  // ---- connecting ------------------------------------------------------------------------------------------------
  function claims(token) {
    const part = token.split('.')[1]
    if (!part) throw new Error('not a JWT')
    return JSON.parse(atob(part.replace(/-/g, '+').replace(/_/g, '/')))
  }

  async function api(method, path, body) {
    const res = await fetch(path, {
      method,
      headers: { authorization: `Bearer ${session.token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    })
    const json = await res.json().catch(() => ({}))
    if (!res.ok) throw new Error(json.error || `HTTP ${res.status}`)
    return json
  }

  function watch(token, eventIdIn) {
    let c
    try {
      c = claims(token)
    } catch (err) {
      setConn('error', `bad token: ${err.message}`)
      return
    }
    const eventId = eventIdIn || (Array.isArray(c.events) ? c.events[0] : '')
    if (!eventId) {
      setConn('error', 'no event: give one or use a token with events')
      return
    }
    session?.client.end(true)
    runners.clear()
    alerts.clear()
    board = null
    Object.assign(bounds, { minX: 1, minY: 1, maxX: 0, maxY: 0 })
    view.auto = true
    dirty.map = dirty.board = dirty.alerts = true
    const url = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/mqtt`
    const client = mqtt.connect(url, {
      clientId: `${c.role}:${c.sub}:console-${Math.random().toString(36).slice(2, 10)}`,
      username: 'jwt',
      password: token,
      protocolVersion: 4,
      reconnectPeriod: 2000,
      connectTimeout: 15000,
      resubscribe: false,
    })
    session = { token, eventId, role: c.role, sub: c.sub, client }
    document.body.dataset.event = eventId
    setConn('connecting', `connecting to ${eventId}…`)
    client.on('connect', () => {
      setConn('connected', `connected · ${eventId}`)
      const t = (leaf) => `events/${eventId}/${leaf}`
      client.subscribe(
        { [t('positions')]: { qos: 0 }, [t('leaderboard')]: { qos: 0 }, [t('alerts')]: { qos: 1 } },
        (err, granted) => {
          const refused = (granted || []).filter((g) => g.qos === 128).map((g) => g.topic)
          if (err || refused.length) setConn('error', `refused: ${refused.join(', ') || err.message}`)
        },
      )
      // The queue as the database has it: what was missed while disconnected is there too.
      loadAlerts()
    })
    client.on('reconnect', () => setConn('reconnecting', 'reconnecting…'))
    client.on('offline', () => setConn('offline', 'offline — retrying'))
    client.on('error', (err) => setConn('error', `error: ${err.message}`))
    client.on('message', onMessage)
  }

  async function loadAlerts() {
    const s = session
    try {
      const res = await api('GET', `/console/api/alerts?event=${encodeURIComponent(s.eventId)}`)
      if (s !== session) return
      for (const a of res.alerts) {
        alerts.set(a.id, a)
        pinInView(a)
      }
      dirty.alerts = dirty.map = true
    } catch (err) {
      setConn('error', `alerts: ${err.message}`)
    }
  }

  function extend(mx, my) {
    if (mx < bounds.minX) bounds.minX = mx
    if (mx > bounds.maxX) bounds.maxX = mx
    if (my < bounds.minY) bounds.minY = my
    if (my > bounds.maxY) bounds.maxY = my
  }
  /** An open alert's position belongs in the followed view, runner or not. */
  function pinInView(a) {
    const { lat, lon } = a.evidence || {}
    if (!a.closed && a.state !== 'resolved' && typeof lat === 'number' && typeof lon === 'number')
      extend(mercX(lon), mercY(lat))
  }

  function onMessage(topic, buf) {
    perf.messages++
    let m
    try {
      m = JSON.parse(buf.toString())
    } catch {
      return
    }
    const leaf = topic.slice(topic.lastIndexOf('/') + 1)
    if (leaf === 'positions') {
      for (const r of m.runners) {
        const mx = mercX(r.lon)
        const my = mercY(r.lat)
        const cur = runners.get(r.userId)
        if (cur) {
          if (r.t < cur.t) continue
          cur.mx = mx
          cur.my = my
          cur.t = r.t
          cur.alert = r.alert
        } else runners.set(r.userId, { mx, my, t: r.t, alert: r.alert })
        extend(mx, my)
      }
      perf.positions += m.runners.length
      dirty.map = true
    } else if (leaf === 'leaderboard') {
      board = m
      dirty.board = true
    } else if (leaf === 'alerts') {
      const prev = alerts.get(m.id)
      alerts.set(m.id, { acknowledged: null, closed: null, ...prev, ...m })
      pinInView(m)
      dirty.alerts = dirty.map = true
    }
  }

  // ---- the map ---------------------------------------------------------------------------------------------------
  const canvas = $('map')
  const ctx = canvas.getContext('2d')
  const dots = document.createElement('canvas')
  const dctx = dots.getContext('2d')
  let image = null
  let pixels = null

  function resize() {
    const r = canvas.getBoundingClientRect()
    const w = Math.max(1, Math.floor(r.width))
    const h = Math.max(1, Math.floor(r.height))
    if (canvas.width === w && canvas.height === h) return
    canvas.width = dots.width = w
    canvas.height = dots.height = h
    image = dctx.createImageData(w, h)
    pixels = new Uint32Array(image.data.buffer)
    dirty.map = true
  }

  function fitView() {
    if (bounds.maxX < bounds.minX) return
    const w = canvas.width
    const h = canvas.height
    const dx = Math.max(bounds.maxX - bounds.minX, 1e-6)
    const dy = Math.max(bounds.maxY - bounds.minY, 1e-6)
    view.scale = Math.min(w / dx, h / dy) * 0.9
    view.ox = (bounds.minX + bounds.maxX) / 2 - w / 2 / view.scale
    view.oy = (bounds.minY + bounds.maxY) / 2 - h / 2 / view.scale
  }

  function drawTiles() {
    const z = Math.max(0, Math.min(19, Math.round(Math.log2(view.scale / 256))))
    const n = 2 ** z
    const size = view.scale / n
    const x0 = Math.floor(view.ox * n)
    const y0 = Math.floor(view.oy * n)
    const x1 = Math.floor((view.ox + canvas.width / view.scale) * n)
    const y1 = Math.floor((view.oy + canvas.height / view.scale) * n)
    if ((x1 - x0 + 1) * (y1 - y0 + 1) > 150) return
    for (let x = x0; x <= x1; x++)
      for (let y = y0; y <= y1; y++) {
        if (y < 0 || y >= n) continue
        const key = `${z}/${x}/${y}`
        let img = tiles.get(key)
        if (!img) {
          img = new Image()
          img.crossOrigin = 'anonymous'
          img.onload = () => (dirty.map = true)
          img.src = tileUrl
            .replace('{z}', z)
            .replace('{x}', ((x % n) + n) % n)
            .replace('{y}', y)
          tiles.set(key, img)
          if (tiles.size > 600) tiles.delete(tiles.keys().next().value)
        }
        if (img.complete && img.naturalWidth > 0)
          ctx.drawImage(img, (x / n - view.ox) * view.scale, (y / n - view.oy) * view.scale, size + 0.5, size + 0.5)
      }
  }

  const RUNNER = 0xffc05a1f // ABGR (little-endian): a blue dot
  const FLAGGED = 0xff1f1fe0 // red: the runner has an open alert

  function drawMap() {
    resize()
    if (view.auto) fitView()
    const w = canvas.width
    const h = canvas.height
    ctx.clearRect(0, 0, w, h)
    if (tileUrl) drawTiles()
    pixels.fill(0)
    const { ox, oy, scale } = view
    let drawn = 0
    // 2×2 px per runner in a crowd, 4×4 while they are few enough to be told apart.
    const big = runners.size <= 5000
    const edge = big ? 3 : 1
    for (const r of runners.values()) {
      const x = ((r.mx - ox) * scale) | 0
      const y = ((r.my - oy) * scale) | 0
      if (x < 0 || y < 0 || x >= w - edge || y >= h - edge) continue
      const c = r.alert ? FLAGGED : RUNNER
      const i = y * w + x
      pixels[i] = c
      pixels[i + 1] = c
      pixels[i + w] = c
      pixels[i + w + 1] = c
      if (big) {
        for (let k = 0; k < 4; k++) {
          pixels[i + 2 * w + k] = c
          pixels[i + 3 * w + k] = c
        }
        pixels[i + 2] = c
        pixels[i + 3] = c
        pixels[i + w + 2] = c
        pixels[i + w + 3] = c
      }
      drawn++
    }
    dctx.putImageData(image, 0, 0)
    ctx.drawImage(dots, 0, 0)
    // Open alerts pinned where they happened.
    let pins = 0
    ctx.lineWidth = 2
    for (const a of alerts.values()) {
      if (a.closed || a.state === 'resolved') continue
      const { lat, lon } = a.evidence || {}
      if (typeof lat !== 'number' || typeof lon !== 'number') continue
      const x = (mercX(lon) - ox) * scale
      const y = (mercY(lat) - oy) * scale
      if (x < 0 || y < 0 || x > w || y > h) continue
      ctx.strokeStyle = a.acknowledged ? '#e90' : '#d11'
      ctx.beginPath()
      ctx.arc(x, y, 9, 0, 2 * Math.PI)
      ctx.stroke()
      ctx.beginPath()
      ctx.moveTo(x, y - 9)
      ctx.lineTo(x, y - 20)
      ctx.stroke()
      pins++
    }
    const sel = selected && runners.get(selected.userId)
    if (sel) {
      ctx.strokeStyle = '#111'
      ctx.beginPath()
      ctx.arc((sel.mx - ox) * scale, (sel.my - oy) * scale, 6, 0, 2 * Math.PI)
      ctx.stroke()
    }
    perf.drawn = drawn
    canvas.dataset.drawn = String(drawn)
    canvas.dataset.pins = String(pins)
    $('visible').textContent = `${drawn} of ${runners.size} runners on the map`
  }

  // Pan, zoom; "fit" (or a double click) goes back to following the runners.
  let drag = null
  canvas.addEventListener('mousedown', (e) => {
    drag = { x: e.clientX, y: e.clientY }
  })
  window.addEventListener('mouseup', () => {
    drag = null
  })
  window.addEventListener('mousemove', (e) => {
    if (!drag) return
    view.auto = false
    view.ox -= (e.clientX - drag.x) / view.scale
    view.oy -= (e.clientY - drag.y) / view.scale
    drag = { x: e.clientX, y: e.clientY }
    dirty.map = true
  })
  canvas.addEventListener(
    'wheel',
    (e) => {
      e.preventDefault()
      view.auto = false
      const r = canvas.getBoundingClientRect()
      const mx = view.ox + (e.clientX - r.left) / view.scale
      const my = view.oy + (e.clientY - r.top) / view.scale
      view.scale *= e.deltaY < 0 ? 1.25 : 0.8
      view.ox = mx - (e.clientX - r.left) / view.scale
      view.oy = my - (e.clientY - r.top) / view.scale
      dirty.map = true
    },
    { passive: false },
  )
  const refit = () => {
    view.auto = true
    dirty.map = true
  }
  canvas.addEventListener('dblclick', refit)
  $('fit').addEventListener('click', refit)
  window.addEventListener('resize', () => (dirty.map = true))

  // ---- leaderboard and search ------------------------------------------------------------------------------------
  function drawBoard() {
    const q = $('search').value.trim().toLowerCase()
    const body = $('board')
    if (board) {
      $('runners').textContent = `(${board.runners} ranked)`
      const rows = board.top.filter((r) => !q || r.userId.toLowerCase().includes(q))
      body.replaceChildren(
        ...rows.map((r) => {
          const tr = el(
            'tr',
            {},
            el('td', { textContent: r.rank }),
            el('td', { textContent: r.userId }),
            el('td', { textContent: (r.distanceM / 1000).toFixed(2) }),
            el('td', { textContent: pace(r.paceSPerKm) }),
            el('td', { textContent: hms(r.etaS) }),
          )
          tr.dataset.user = r.userId
          return tr
        }),
      )
      body.dataset.rows = String(rows.length)
    }
    // Runners on the map beyond the published top: the search reaches every one the medic sees.
    const matches = $('matches')
    const found = []
    if (q.length >= 2)
      for (const id of runners.keys()) {
        if (id.toLowerCase().includes(q)) found.push(id)
        if (found.length >= 20) break
      }
    // Rebuild only when the set changes: leaderboard messages redraw the board several times a second, and replacing
    // the list under the pointer would swallow the medic's click (the element clicked is detached mid-click).
    const key = found.join('\n')
    if (matches.dataset.key === key) return
    matches.dataset.key = key
    matches.replaceChildren(
      ...found.map((id) => {
        const li = el('li', { textContent: id })
        li.dataset.user = id
        return li
      }),
    )
  }
  $('search').addEventListener('input', () => (dirty.board = true))
  const pick = (e) => {
    const u = e.target.closest('[data-user]')?.dataset.user
    if (u) openRunner(u)
  }
  $('board').addEventListener('click', pick)
  $('matches').addEventListener('click', pick)

  // ---- alert queue -----------------------------------------------------------------------------------------------
  const rank = (a) => (a.closed || a.state === 'resolved' ? 2 : a.acknowledged ? 1 : 0)
  function drawAlerts() {
    const list = [...alerts.values()].sort((a, b) => rank(a) - rank(b) || b.openedAt - a.openedAt)
    let open = 0
    $('alerts').replaceChildren(
      ...list.slice(0, 300).map((a) => {
        const closed = Boolean(a.closed) || a.state === 'resolved'
        if (!closed) open++
        const li = el(
          'li',
          { className: a.severity },
          el('b', { textContent: a.kind }),
          ` · `,
          el('a', { href: '#', textContent: a.userId, className: 'who' }),
          ` · ${new Date(a.openedAt).toLocaleTimeString()} · `,
          el('span', {
            className: 'state',
            textContent: a.closed
              ? `resolved by ${a.closed.by}`
              : a.acknowledged
                ? `ack by ${a.acknowledged.by}`
                : a.state,
          }),
        )
        li.dataset.alertId = a.id
        li.dataset.user = a.userId
        li.dataset.acked = String(Boolean(a.acknowledged))
        li.dataset.closed = String(Boolean(a.closed))
        if (!a.acknowledged && !a.closed) li.append(el('button', { className: 'ack', textContent: 'acknowledge' }))
        if (!a.closed) li.append(el('button', { className: 'resolve', textContent: 'resolve' }))
        return li
      }),
    )
    $('alertcount').textContent = `(${open} open)`
    $('alertcount').dataset.open = String(open)
  }
  $('alerts').addEventListener('click', async (e) => {
    const li = e.target.closest('li')
    if (!li) return
    if (e.target.classList.contains('who')) {
      e.preventDefault()
      return openRunner(li.dataset.user)
    }
    const action = e.target.classList.contains('ack')
      ? 'acknowledge'
      : e.target.classList.contains('resolve')
        ? 'resolve'
        : null
    if (!action) return
    e.target.disabled = true
    try {
      const msg = await api('POST', `/console/api/alerts/${li.dataset.alertId}/${action}`, {})
      alerts.set(msg.id, { ...alerts.get(msg.id), ...msg })
    } catch (err) {
      // Someone else was quicker: the queue is refreshed from the database.
      if (/already/.test(err.message)) loadAlerts()
      else li.append(el('small', { className: 'err', textContent: ` ${err.message}` }))
    }
    dirty.alerts = dirty.map = true
  })

  // ---- runner detail (delta sync) --------------------------------------------------------------------------------
  function openRunner(userId) {
    if (selected) clearTimeout(selected.timer)
    selected = { userId, cursor: 0, readings: [], timer: 0 }
    $('detail').hidden = false
    $('detail-id').textContent = userId
    $('detail-status').textContent = 'loading…'
    $('detail').dataset.user = userId
    $('detail').dataset.readings = '0'
    dirty.map = true
    void syncRunner(selected)
  }
  $('detail-close').addEventListener('click', () => {
    if (selected) clearTimeout(selected.timer)
    selected = null
    $('detail').hidden = true
    dirty.map = true
  })

  async function syncRunner(s) {
    try {
      for (let page = 0; page < 20; page++) {
        const res = await api('POST', '/console/api/runner', {
          eventId: session.eventId,
          userId: s.userId,
          cursor: s.cursor,
        })
        if (s !== selected) return
        s.readings.push(...res.readings)
        s.cursor = res.nextCursor
        if (!res.more) break
      }
      $('detail-status').textContent = `${s.readings.length} readings, synced ${new Date().toLocaleTimeString()}`
      $('detail').dataset.readings = String(s.readings.length)
      drawCharts(s)
    } catch (err) {
      if (s !== selected) return
      $('detail-status').textContent = err.message
    }
    // The next delta: only what is newer than the cursor.
    s.timer = setTimeout(() => syncRunner(s), 5000)
  }

  function series(s) {
    const hr = []
    // Distance is counted per device: the curve follows the device with the most of it.
    const byDevice = new Map()
    for (const r of s.readings) {
      if (r.metric === 'hr') hr.push([r.t, r.value])
      else {
        if (!byDevice.has(r.device)) byDevice.set(r.device, [])
        byDevice.get(r.device).push([r.t, r.value])
      }
    }
    const steps = [...byDevice.values()].sort((a, b) => b.length - a.length)[0] || []
    steps.sort((a, b) => a[0] - b[0])
    hr.sort((a, b) => a[0] - b[0])
    // A distance row is the stretch since the device's previous fix (docs/readings.md): the curve is their sum.
    let sum = 0
    const dist = steps.map(([t, v]) => {
      sum += v
      return [t, sum]
    })
    const pc = []
    // Pace over the last minute of distance, in min/km.
    let j = 0
    for (let i = 0; i < dist.length; i++) {
      while (dist[i][0] - dist[j][0] > 60000) j++
      const dd = dist[i][1] - dist[j][1]
      const dt = (dist[i][0] - dist[j][0]) / 1000
      if (dd > 1 && dt > 10) pc.push([dist[i][0], Math.min(20, dt / dd / 0.06)])
    }
    return { hr, pace: pc, dist: dist.map(([t, v]) => [t, v / 1000]) }
  }

  function chart(id, pts, color) {
    const c = $(id)
    const g = c.getContext('2d')
    g.clearRect(0, 0, c.width, c.height)
    if (pts.length < 2) return
    let t0 = Infinity
    let t1 = -Infinity
    let v0 = Infinity
    let v1 = -Infinity
    for (const [t, v] of pts) {
      t0 = Math.min(t0, t)
      t1 = Math.max(t1, t)
      v0 = Math.min(v0, v)
      v1 = Math.max(v1, v)
    }
    const sx = (c.width - 30) / Math.max(1, t1 - t0)
    const sy = (c.height - 10) / Math.max(1e-6, v1 - v0)
    g.strokeStyle = color
    g.beginPath()
    pts.forEach(([t, v], i) => {
      const x = 30 + (t - t0) * sx
      const y = c.height - 5 - (v - v0) * sy
      if (i) g.lineTo(x, y)
      else g.moveTo(x, y)
    })
    g.stroke()
    g.fillStyle = '#555'
    const digits = v1 - v0 < 1 ? 2 : 1
    g.fillText(v1.toFixed(digits), 0, 10)
    g.fillText(v0.toFixed(digits), 0, c.height - 2)
  }

  function drawCharts(s) {
    const d = series(s)
    chart('chart-hr', d.hr, '#d11')
    chart('chart-pace', d.pace, '#26c')
    chart('chart-dist', d.dist, '#182')
    // What the charts show, for the page's own tests and for a medic's screen reader.
    const last = d.dist[d.dist.length - 1]
    $('detail').dataset.distanceKm = last ? String(last[1]) : '0'
    $('detail').dataset.pacePoints = String(d.pace.length)
  }

  // ---- the frame loop --------------------------------------------------------------------------------------------
  let last = 0
  function frame(now) {
    if (last) ring(perf.frames, now - last)
    last = now
    if (dirty.map) {
      dirty.map = false
      const t0 = performance.now()
      drawMap()
      const ms = performance.now() - t0
      ring(perf.draws, ms)
      $('frame').textContent = `draw ${ms.toFixed(1)} ms`
    }
    if (dirty.board) {
      dirty.board = false
      drawBoard()
    }
    if (dirty.alerts) {
      dirty.alerts = false
      drawAlerts()
    }
    requestAnimationFrame(frame)
  }
  requestAnimationFrame(frame)

  // ---- start -----------------------------------------------------------------------------------------------------
  fetch('/console/config')
    .then((r) => r.json())
    .then((c) => {
      tileUrl = c.tileUrl
      $('attribution').textContent = c.tileUrl ? c.tileAttribution : ''
      dirty.map = true
    })
    .catch(() => undefined)
  $('login').addEventListener('submit', (e) => {
    e.preventDefault()
    watch(e.target.token.value.trim(), e.target.event.value.trim())
  })
  // #token=…&event=… (a fragment never reaches the server or its logs): connect at once.
  if (params.get('token')) watch(params.get('token'), params.get('event') || '')
})()
