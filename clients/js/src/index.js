// @streamhost/client: a browser client for streamhost's client socket (the iii stream wire
// contract plus the resume protocol of issue 14).
//
// Shaped around one socket per client and one wire subscription per (stream, group, item):
// the server sends each frame once per socket however many subscriptions match, so a frame is
// routed here to every local subscription it concerns. Each subscription remembers the last
// offset and epoch it saw; a reconnect joins again with them and the server either replays
// what was missed (`recovered`) or sends a fresh `sync`. Against a server that does not send
// offsets the client simply takes the fresh `sync` on every reconnect.
//
// Presence (notes/presence-protocol.md): a subscription made with `presence: true` joins with
// `"presence": true` and keeps `members` (client id -> member) from the server's snapshot and
// the join/leave frames after it. Presence frames carry no offset and skip the offset checks.

const DEFAULTS = {
  tokenVia: 'protocol',
  heartbeat: true,
  heartbeatIntervalMs: 15000,
  reconnect: { initialDelayMs: 250, maxDelayMs: 10000, factor: 2 },
}

/** Close codes the server uses (streamhost's src/fanout/outbox.rs and sockets/client.rs). */
export const CloseCodes = Object.freeze({
  GOING_AWAY: 1001,
  TOO_BIG: 1009,
  SLOW: 4008,
  IDLE: 4010,
  TOKEN_EXPIRED: 4401,
  TENANT_DISABLED: 4403,
})

/** A tiny event emitter: `on` returns a function that removes the listener. */
class Emitter {
  constructor() {
    this._listeners = new Map()
  }

  on(name, fn) {
    let set = this._listeners.get(name)
    if (!set) this._listeners.set(name, (set = new Set()))
    set.add(fn)
    return () => set.delete(fn)
  }

  off(name, fn) {
    this._listeners.get(name)?.delete(fn)
  }

  _emit(name, ...args) {
    for (const fn of [...(this._listeners.get(name) ?? [])]) {
      // A listener that throws must not stop the client or the other listeners.
      try {
        fn(...args)
      } catch (e) {
        setTimeout(() => {
          throw e
        })
      }
    }
  }
}

/** Keys a value of a group's `sync` (which lists values without their ids). */
function defaultKeyOf(value) {
  const id = value !== null && typeof value === 'object' ? value.id : undefined
  return typeof id === 'string' || typeof id === 'number' ? String(id) : undefined
}

function isOffset(v) {
  return Number.isSafeInteger(v) && v >= 0
}

/**
 * One subscription: a whole group (`itemId` null) or one item. It keeps the state for the app
 * and the position (offset, epoch) that a reconnect resumes from.
 */
export class Subscription extends Emitter {
  constructor(client, id, streamName, groupId, itemId, keyOf, opts = {}) {
    super()
    /** Whether this subscription asked for presence, and what it tells the others. */
    this.presence = opts.presence === true
    this._info = opts.info
    /** Presence: client id -> { client, user, info }, the listed members (up to the server's max). */
    this.members = new Map()
    /** Presence: how many members the group has, listed or not (exact at each snapshot). */
    this.memberCount = 0
    if (typeof opts.onPresence === 'function') this.on('presence', opts.onPresence)
    this.client = client
    this.id = id
    this.streamName = streamName
    this.groupId = groupId
    this.itemId = itemId
    this._keyOf = keyOf
    /** Group subscriptions: item id -> value, in the server's order. */
    this.items = new Map()
    /** Item subscriptions: the item's value, or null. */
    this.value = null
    /** The last offset seen, and the epoch it belongs to (null until the server sends them). */
    this.offset = null
    this.epoch = null
    /** True once the first `sync` (or recovery) has arrived. */
    this.ready = false
    /** True while a join is unanswered: frames before its answer belong to the old one. */
    this.pending = false
    this.left = false
    this.stats = { syncs: 0, recoveries: 0, missed: 0, duplicates: 0, gaps: 0 }
  }

  /** The group's values, in order (group subscriptions). */
  values() {
    return [...this.items.values()]
  }

  /** Stops the subscription on the server and here. */
  leave() {
    this.client._leave(this)
  }

  _joinFrame(resume) {
    const data = { subscriptionId: this.id, streamName: this.streamName, groupId: this.groupId }
    if (this.itemId !== null) data.id = this.itemId
    if (this.presence) data.presence = true
    if (this._info !== undefined) data.info = this._info
    // Both or neither (resume-protocol.md): resume only from a position the server gave us.
    if (resume && isOffset(this.offset) && typeof this.epoch === 'string') {
      data.offset = this.offset
      data.epoch = this.epoch
    }
    return { type: 'join', data }
  }

  /** Takes one server frame about this subscription's group or item. */
  _receive(frame) {
    const event = frame.event
    const type = event.type
    if (type === 'sync') return this._sync(frame)
    if (type === 'recovered') return this._recovered(frame)
    if (type === 'presence') return this._presence(frame)
    if (type === 'unauthorized') {
      // The answer to our join: a `stream:join` trigger refused it (it is tried again on the
      // next connection, where a fresh token may be let in).
      this.pending = false
      this.ready = false
      this._emit('unauthorized', frame)
      return
    }
    if (this.pending) return // a frame of the subscription being replaced
    if (!this._take(frame)) return
    if (type === 'event') {
      const e = event.event ?? {}
      this._emit('event', { type: e.type, data: e.data, id: frame.id, offset: frame.offset ?? null, frame })
      return
    }
    if (type === 'create' || type === 'update' || type === 'delete') {
      this._apply(type, frame.id, event.data)
      this._emit('change', { type, id: frame.id, data: event.data, offset: frame.offset ?? null, frame })
    }
  }

  /**
   * Offset bookkeeping for one event frame: false when it must be dropped (seen already).
   * A group subscriber sees every offset of its group, so a gap means it missed something:
   * it joins again from its last offset to get the missing events.
   */
  _take(frame) {
    const offset = frame.offset
    if (!isOffset(offset)) return true // a server without offsets
    if (typeof frame.epoch === 'string' && frame.epoch !== this.epoch) {
      if (this.epoch !== null) {
        // Another history than the one our state came from: start again from a snapshot.
        this.epoch = null
        this.offset = null
        this.client._rejoin(this, false)
        return false
      }
      this.epoch = frame.epoch
    }
    if (isOffset(this.offset) && offset <= this.offset) {
      this.stats.duplicates++
      return false
    }
    if (this.itemId === null && isOffset(this.offset) && offset > this.offset + 1) {
      this.stats.gaps++
      this.client._rejoin(this, true)
      return false
    }
    this.offset = offset
    return true
  }

  _sync(frame) {
    this.pending = false
    this.ready = true
    this.stats.syncs++
    this.offset = isOffset(frame.offset) ? frame.offset : null
    this.epoch = typeof frame.epoch === 'string' ? frame.epoch : null
    const data = frame.event.data
    if (this.itemId !== null) {
      this.value = data ?? null
    } else {
      this.items = new Map()
      const list = Array.isArray(data) ? data : []
      list.forEach((v, i) => this.items.set(this._keyOf(v) ?? `#${i}`, v))
    }
    this._emit('sync', { recovered: frame.recovered === true ? true : false, frame })
    this._emit('state', this)
  }

  /** A presence frame: `snapshot` replaces the members, `join` and `leave` change them. */
  _presence(frame) {
    if (!this.presence) return
    const data = frame.event.data ?? {}
    const action = data.action
    if (action === 'snapshot') {
      this.members = new Map()
      for (const m of Array.isArray(data.members) ? data.members : []) this.members.set(String(m.client), m)
      this.memberCount = Number.isSafeInteger(data.count) ? data.count : this.members.size
    } else if (action === 'join' && data.member) {
      if (!this.members.has(String(data.member.client))) this.memberCount++
      this.members.set(String(data.member.client), data.member)
    } else if (action === 'leave' && data.member) {
      if (this.members.delete(String(data.member.client))) this.memberCount = Math.max(0, this.memberCount - 1)
    } else {
      return
    }
    this._emit('presence', { action, member: data.member ?? null, members: this.members, frame })
  }

  _recovered(frame) {
    this.pending = false
    this.ready = true
    this.stats.recoveries++
    const missed = frame.event.data?.missed
    if (Number.isSafeInteger(missed)) this.stats.missed += missed
    this._emit('recovered', { missed: missed ?? 0, frame })
  }

  _apply(type, id, data) {
    if (this.itemId !== null) {
      this.value = type === 'delete' ? null : (data ?? null)
    } else if (id !== null && id !== undefined) {
      if (type === 'delete') this.items.delete(String(id))
      else this.items.set(String(id), data)
    }
    this._emit('state', this)
  }
}

/**
 * A connection to streamhost's client socket that stays up: it reconnects with exponential
 * backoff and jitter and resumes every subscription from its last offset.
 */
export class StreamClient extends Emitter {
  /**
   * @param {string} url  ws:// or wss:// URL of the client socket (e.g. `ws://host:3112`)
   * @param {object} [options] see index.d.ts
   */
  constructor(url, options = {}) {
    super()
    this.url = url
    this.options = { ...DEFAULTS, ...options, reconnect: { ...DEFAULTS.reconnect, ...options.reconnect } }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket
    if (!this._WebSocket) throw new Error('no WebSocket here: pass options.WebSocket')
    this._subs = new Map() // subscription id -> Subscription
    this._byKey = new Map() // stream \0 group \0 item -> Subscription
    this._nextSub = 1
    this._ws = null
    this._attempt = 0
    this._timer = null
    this._watchdog = null
    this._closed = false
    this._lastBeat = 0
    this._beatEvery = this.options.heartbeatIntervalMs
    this.state = 'idle'
    this.stats = { connects: 0, reconnects: 0, heartbeats: 0, watchdogCloses: 0 }
    if (options.connect !== false) this.connect()
  }

  /** Subscribes to a whole group; the same group twice gives the same subscription. */
  group(streamName, groupId, opts = {}) {
    return this._subscribe(streamName, groupId, null, opts)
  }

  /** Subscribes to one item of a group. */
  item(streamName, groupId, itemId, opts = {}) {
    return this._subscribe(streamName, groupId, String(itemId), opts)
  }

  /** Opens the socket (called by the constructor unless `connect: false`). */
  connect() {
    this._closed = false
    if (this._ws || this._timer || this._opening) return
    this._open()
  }

  /** Closes the socket for good: no reconnect. */
  close() {
    this._closed = true
    clearTimeout(this._timer)
    this._timer = null
    this._stopWatchdog()
    const ws = this._ws
    this._ws = null
    if (ws) ws.close(1000, 'client closed')
    this._setState('closed')
  }

  _subscribe(streamName, groupId, itemId, opts) {
    const key = `${streamName}\0${groupId}\0${itemId ?? ''}`
    const existing = this._byKey.get(key)
    if (existing) return existing
    const keyOf = opts.keyOf ?? defaultKeyOf
    const sub = new Subscription(this, `sub-${this._nextSub++}`, streamName, groupId, itemId, keyOf, opts)
    this._subs.set(sub.id, sub)
    this._byKey.set(key, sub)
    this._join(sub, true)
    return sub
  }

  _leave(sub) {
    if (sub.left) return
    sub.left = true
    this._subs.delete(sub.id)
    this._byKey.delete(`${sub.streamName}\0${sub.groupId}\0${sub.itemId ?? ''}`)
    this._send({ type: 'leave', data: { subscriptionId: sub.id, streamName: sub.streamName, groupId: sub.groupId } })
  }

  /** Joins again on the open socket (a gap or a new epoch); the answer replaces the old one. */
  _rejoin(sub, resume) {
    if (sub.pending) return
    this._join(sub, resume)
  }

  _join(sub, resume) {
    if (!this._isOpen()) return // joined when the socket opens
    sub.pending = true
    this._send(sub._joinFrame(resume))
  }

  _isOpen() {
    return this._ws !== null && this._ws.readyState === 1
  }

  _send(frame) {
    if (this._isOpen()) this._ws.send(JSON.stringify(frame))
  }

  _setState(state) {
    if (this.state === state) return
    this.state = state
    this._emit('state', state)
  }

  async _open() {
    this._setState(this.stats.connects === 0 ? 'connecting' : 'reconnecting')
    let token = this.options.token
    this._opening = true
    try {
      if (typeof token === 'function') token = await token()
    } catch (e) {
      this._emit('error', e)
      return this._scheduleReconnect()
    } finally {
      this._opening = false
    }
    if (this._closed) return
    const url = new URL(this.url)
    if (this.options.heartbeat) url.searchParams.set('heartbeat', '1')
    let protocols
    if (token && this.options.tokenVia === 'query') url.searchParams.set('token', token)
    else if (token) protocols = ['Authorization', token]
    let ws
    try {
      ws = new this._WebSocket(url.toString(), protocols)
    } catch (e) {
      this._emit('error', e)
      return this._scheduleReconnect()
    }
    this._ws = ws
    this._heardOnce = false
    this._lastBeat = 0 // the watchdog waits for this connection's first heartbeat
    ws.onopen = () => {
      if (this._ws !== ws) return
      this.stats.connects++
      if (this.stats.connects > 1) this.stats.reconnects++
      this._setState('open')
      this._emit('open')
      this._heard()
      for (const sub of this._subs.values()) this._join(sub, true)
    }
    ws.onmessage = (msg) => {
      if (this._ws !== ws) return
      if (!this._heardOnce) {
        // The server talks back: the connection works, so the next drop starts backoff afresh.
        this._heardOnce = true
        this._attempt = 0
      }
      this._onMessage(msg.data)
      if (this._ws === ws) this._heard()
    }
    ws.onerror = () => {} // onclose follows and says more
    ws.onclose = (ev) => {
      if (this._ws !== ws) return
      this._ws = null
      this._stopWatchdog()
      for (const sub of this._subs.values()) sub.pending = false
      this._emit('close', { code: ev.code, reason: ev.reason })
      if (ev.code === CloseCodes.TOKEN_EXPIRED) this._emit('tokenexpired')
      this._scheduleReconnect()
    }
  }

  _scheduleReconnect() {
    if (this._closed) return
    const r = this.options.reconnect
    const ceiling = Math.min(r.maxDelayMs, r.initialDelayMs * r.factor ** this._attempt)
    // Equal jitter: half fixed, half random, so thousands of clients do not return at once.
    const delay = ceiling / 2 + Math.random() * (ceiling / 2)
    this._attempt++
    this._setState('reconnecting')
    this._emit('reconnecting', { attempt: this._attempt, delayMs: delay })
    this._timer = setTimeout(() => {
      this._timer = null
      this._open()
    }, delay)
  }

  _onMessage(data) {
    if (typeof data !== 'string') return // the server sends text frames
    let frame
    try {
      frame = JSON.parse(data)
    } catch {
      return
    }
    if (frame === null || typeof frame !== 'object') return
    if (frame.type === 'heartbeat') return this._beat()
    if (frame.type === 'error') return this._emit('error', frame.error ?? frame)
    if (frame.type !== 'stream' || !frame.event || typeof frame.event.type !== 'string') return
    this._emit('frame', frame)
    for (const sub of this._route(frame)) sub._receive(frame)
  }

  /** The subscriptions a frame concerns. A join's answer goes only to the one that joined. */
  _route(frame) {
    const { streamName, groupId } = frame
    const id = frame.id === null || frame.id === undefined ? '' : String(frame.id)
    const group = this._byKey.get(`${streamName}\0${groupId}\0`)
    const item = id ? this._byKey.get(`${streamName}\0${groupId}\0${id}`) : undefined
    const type = frame.event.type
    if (type === 'presence') {
      // Group-wide, once per socket: every subscription of the group that asked for it.
      return [...this._subs.values()].filter((s) => s.presence && s.streamName === streamName && s.groupId === groupId)
    }
    if (type === 'sync' || type === 'recovered' || type === 'unauthorized') {
      if (id) return item ? [item] : []
      if (group) return [group]
      // An answer without an item id while only item subscriptions of this group wait for one.
      for (const sub of this._subs.values()) {
        if (sub.pending && sub.streamName === streamName && sub.groupId === groupId) return [sub]
      }
      return []
    }
    return [group, item].filter(Boolean)
  }

  _beat() {
    this.stats.heartbeats++
    const now = Date.now()
    // A server configured with a longer interval than ours must not look dead.
    if (this._lastBeat && now - this._lastBeat > this._beatEvery) this._beatEvery = now - this._lastBeat
    this._lastBeat = now
    this._emit('heartbeat')
  }

  /** Anything heard from the server re-arms the watchdog, once heartbeats have been seen. */
  _heard() {
    this._stopWatchdog()
    if (!this.options.heartbeat || !this._lastBeat) return
    const ws = this._ws
    // Two missed heartbeats (and half an interval for a late one) mean a dead connection.
    this._watchdog = setTimeout(() => {
      if (this._ws !== ws) return
      this.stats.watchdogCloses++
      this._emit('timeout')
      this._ws = null
      for (const sub of this._subs.values()) sub.pending = false
      ws.onclose = null
      ws.close(4000, 'no heartbeat')
      this._emit('close', { code: 4000, reason: 'no heartbeat' })
      this._scheduleReconnect()
    }, this._beatEvery * 2.5)
  }

  _stopWatchdog() {
    clearTimeout(this._watchdog)
    this._watchdog = null
  }
}
