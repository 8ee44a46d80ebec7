// Runs the published npm `iii-sdk` as a worker against a running streamhost.
//
// Env: III_URL (worker socket, ws://127.0.0.1:PORT) and STREAMHOST_CLIENT_URL (client socket).
// Driven by tests/sdk_clients.rs; run by hand with
//   III_URL=ws://127.0.0.1:49134 STREAMHOST_CLIENT_URL=ws://127.0.0.1:3112 node tests/sdk/node/streams.mjs
// Exits 0 when every check passed, 1 (after printing what differed) otherwise.

import assert from 'node:assert/strict'
import { registerWorker } from 'iii-sdk'
import { createStream } from 'iii-sdk/helpers'
import WebSocket from 'ws'

const WORKER_URL = process.env.III_URL
const CLIENT_URL = process.env.STREAMHOST_CLIENT_URL
if (!WORKER_URL || !CLIENT_URL) {
  console.error('FAIL: set III_URL (worker socket) and STREAMHOST_CLIENT_URL (client socket)')
  process.exit(2)
}
process.env.OTEL_ENABLED = 'false'

const WAIT_MS = 5000
const OPTS = { otel: { enabled: false }, enableMetricsReporting: false, invocationTimeoutMs: WAIT_MS }

// A watchdog: the whole script must finish well inside the Rust test's timeout.
setTimeout(() => {
  console.error(`FAIL: timed out in step "${step}"`)
  process.exit(3)
}, 20000).unref()

let step = 'connect'
const log = (...a) => console.log('[node]', ...a)
const begin = (name) => {
  step = name
  log('--', name)
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Awaits `p`, failing after `ms` with `what` in the message. */
const within = (p, what, ms = WAIT_MS) =>
  Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`no ${what} within ${ms} ms`)))])

/** Asserts that `p` rejects; returns the error. */
async function rejection(p, what) {
  try {
    const r = await p
    throw new assert.AssertionError({ message: `${what}: expected a rejection, got ${JSON.stringify(r)}` })
  } catch (e) {
    if (e instanceof assert.AssertionError) throw e
    return e
  }
}

/** A browser-like client on the client socket: join/leave frames in, server frames out. */
class RawClient {
  static async connect(path = '/') {
    const c = new RawClient()
    c.ws = new WebSocket(CLIENT_URL + path)
    c.queue = []
    c.waiters = []
    c.ws.on('message', (data) => {
      const frame = JSON.parse(data.toString())
      const w = c.waiters.shift()
      if (w) w(frame)
      else c.queue.push(frame)
    })
    await within(new Promise((res, rej) => { c.ws.once('open', res); c.ws.once('error', rej) }), 'client socket open')
    return c
  }

  next(what = 'frame', ms = WAIT_MS) {
    if (this.queue.length) return Promise.resolve(this.queue.shift())
    return within(new Promise((res) => this.waiters.push(res)), `${what} on the raw client`, ms)
  }

  /** Resolves to null when no frame comes within `ms`. */
  async maybeNext(ms) {
    try {
      return await this.next('frame', ms)
    } catch {
      this.waiters.shift()
      return null
    }
  }

  async join(subscriptionId, streamName, groupId, id = null) {
    this.ws.send(JSON.stringify({ type: 'join', data: { subscriptionId, streamName, groupId, id } }))
    return this.next(`answer to the join of ${streamName}/${groupId}`)
  }

  close() {
    this.ws.close()
  }
}

/** Checks a server frame: its shape, a numeric timestamp, and the expected fields. */
function frame(actual, streamName, groupId, id, event, what) {
  assert.equal(typeof actual?.timestamp, 'number', `${what}: timestamp must be a number in ${JSON.stringify(actual)}`)
  assert.ok(Math.abs(actual.timestamp - Date.now()) < 60000, `${what}: timestamp ${actual.timestamp} is not near now (ms since epoch)`)
  // A client frame about a group's history carries its offset and epoch (issue 14); a
  // trigger's payload is the iii frame.
  if ('offset' in actual || 'epoch' in actual) {
    assert.ok(Number.isInteger(actual.offset) && typeof actual.epoch === 'string', `${what}: offset and epoch in ${JSON.stringify(actual)}`)
  }
  const { timestamp, offset, epoch, ...rest } = actual
  assert.deepEqual(rest, { type: 'stream', streamName, groupId, id, event }, what)
}

const iii = registerWorker(WORKER_URL, { ...OPTS, workerName: 'node-sdk-test-a' })
let other
const call = (function_id, payload) => iii.trigger({ function_id, payload })
/** Frames from one worker are handled in order: a reply means every earlier registration is done. */
const settle = (worker = iii) => worker.trigger({ function_id: 'stream::list_groups', payload: { stream_name: '__settle__' } })

async function builtins() {
  begin('built-in functions')
  const client = await RawClient.connect()
  frame(await client.join('sub-1', 'chat', 'room-1'), 'chat', 'room-1', null, { type: 'sync', data: [] }, 'sync of an empty group')

  assert.deepEqual(await call('stream::set', { stream_name: 'chat', group_id: 'room-1', item_id: 'm1', data: { text: 'hi' } }),
    { old_value: null, new_value: { text: 'hi' } }, 'stream::set of a new item')
  frame(await client.next('create frame'), 'chat', 'room-1', 'm1', { type: 'create', data: { text: 'hi' } }, 'create frame')

  assert.deepEqual(await call('stream::set', { stream_name: 'chat', group_id: 'room-1', item_id: 'm1', data: { text: 'hi again' } }),
    { old_value: { text: 'hi' }, new_value: { text: 'hi again' } }, 'stream::set over an item')
  frame(await client.next('update frame'), 'chat', 'room-1', 'm1', { type: 'update', data: { text: 'hi again' } }, 'update frame')

  // Insertion order, not key order: zed before alpha.
  await call('stream::set', { stream_name: 'chat', group_id: 'room-1', item_id: 'zed', data: { text: 'z' } })
  await call('stream::set', { stream_name: 'chat', group_id: 'room-1', item_id: 'alpha', data: { text: 'a' } })
  await call('stream::set', { stream_name: 'chat', group_id: 'room-2', item_id: 'x', data: 7 })
  frame(await client.next('create zed'), 'chat', 'room-1', 'zed', { type: 'create', data: { text: 'z' } }, 'create zed')
  frame(await client.next('create alpha'), 'chat', 'room-1', 'alpha', { type: 'create', data: { text: 'a' } }, 'create alpha')

  assert.deepEqual(await call('stream::get', { stream_name: 'chat', group_id: 'room-1', item_id: 'm1' }), { text: 'hi again' }, 'stream::get')
  assert.equal(await call('stream::get', { stream_name: 'chat', group_id: 'room-1', item_id: 'nope' }), undefined,
    'stream::get of a missing item must give no result (undefined)')
  assert.equal(await call('stream::get', { stream_name: 'nostream', group_id: 'g', item_id: 'i' }), undefined,
    'stream::get in a missing stream must give no result (undefined)')
  assert.equal(await call('stream::get', { stream_name: 'chat', group_id: 'room-2', item_id: 'x' }), 7, 'stream::get of a scalar')

  assert.deepEqual(await call('stream::list', { stream_name: 'chat', group_id: 'room-1' }),
    [{ text: 'hi again' }, { text: 'z' }, { text: 'a' }], 'stream::list is a bare array in insertion order')
  assert.deepEqual(await call('stream::list', { stream_name: 'chat', group_id: 'empty' }), [], 'stream::list of a missing group')
  assert.deepEqual([...(await call('stream::list_groups', { stream_name: 'chat' }))].sort(), ['room-1', 'room-2'], 'stream::list_groups')
  assert.deepEqual(await call('stream::list_groups', { stream_name: 'nostream' }), [], 'stream::list_groups of a missing stream')

  assert.deepEqual(await call('stream::delete', { stream_name: 'chat', group_id: 'room-1', item_id: 'zed' }), { old_value: { text: 'z' } }, 'stream::delete')
  frame(await client.next('delete frame'), 'chat', 'room-1', 'zed', { type: 'delete', data: { text: 'z' } }, 'delete frame')
  assert.deepEqual(await call('stream::delete', { stream_name: 'chat', group_id: 'room-1', item_id: 'zed' }), { old_value: null },
    'stream::delete of a missing item succeeds with old_value null')
  assert.deepEqual(await call('stream::list', { stream_name: 'chat', group_id: 'room-1' }), [{ text: 'hi again' }, { text: 'a' }], 'list after delete')

  const upd = await call('stream::update', {
    stream_name: 'chat', group_id: 'room-1', item_id: 'counter',
    ops: [
      { type: 'set', path: 'name', value: 'c' },
      { type: 'increment', path: 'n', by: 5 },
      { type: 'decrement', path: 'n', by: 2 },
      { type: 'merge', value: { tags: ['a'], meta: { x: 1 } } },
      { type: 'append', path: 'tags', value: 'b' },
      { type: 'increment', path: 'name', by: 1 }, // fails: name is a string
      // iii paths: a string is one literal key (dots included); arrays are for merge/append.
      { type: 'merge', path: ['meta'], value: { y: 2 } },
      { type: 'set', path: 'meta.x', value: true },
      { type: 'append', path: ['meta', 'log'], value: 's' },
      { type: 'remove', path: 'meta.y' }, // the literal key `meta.y`: there is none
    ],
  })
  assert.deepEqual(Object.keys(upd).sort(), ['errors', 'new_value', 'old_value'], `stream::update result keys in ${JSON.stringify(upd)}`)
  assert.equal(upd.old_value, null, 'stream::update of a new item: old_value null')
  assert.deepEqual(upd.new_value, { name: 'c', n: 3, tags: ['a', 'b'], 'meta.x': true, meta: { x: 1, y: 2, log: ['s'] } }, 'stream::update new_value')
  assert.equal(upd.errors.length, 1, `one failed op in ${JSON.stringify(upd.errors)}`)
  assert.equal(upd.errors[0].op_index, 5, 'the failed op index')
  assert.equal(upd.errors[0].code, 'increment.not_number', 'the failed op code')
  assert.equal(typeof upd.errors[0].message, 'string', 'the failed op message')
  frame(await client.next('create frame of update'), 'chat', 'room-1', 'counter', { type: 'create', data: upd.new_value }, 'update creates')

  const upd2 = await call('stream::update', { stream_name: 'chat', group_id: 'room-1', item_id: 'counter', ops: [{ type: 'increment', path: 'n', by: 10 }] })
  assert.deepEqual(upd2, { old_value: upd.new_value, new_value: { ...upd.new_value, n: 13 } }, 'stream::update without errors has no errors key')
  frame(await client.next('update frame of update'), 'chat', 'room-1', 'counter', { type: 'update', data: upd2.new_value }, 'update updates')

  assert.equal(await call('stream::send', { stream_name: 'chat', group_id: 'room-1', type: 'typing', data: { who: 'ann' } }), null, 'stream::send gives null')
  frame(await client.next('event frame'), 'chat', 'room-1', null, { type: 'event', event: { type: 'typing', data: { who: 'ann' } } }, 'event frame')
  // stream::send is not stored.
  assert.deepEqual(await call('stream::list', { stream_name: 'chat', group_id: 'room-1' }), [{ text: 'hi again' }, { text: 'a' }, upd2.new_value], 'send stores nothing')

  await call('stream::set', { stream_name: 'alerts', group_id: 'g', item_id: 'i', data: true })
  assert.deepEqual(await call('stream::list_all', {}), {
    stream: [{ id: 'alerts', groups: ['g'] }, { id: 'chat', groups: ['room-1', 'room-2'] }],
    count: 2,
  }, 'stream::list_all')

  // The room-2 and alerts writes were not for this subscriber.
  const stray = await client.maybeNext(200)
  assert.equal(stray, null, `the room-1 subscriber got a stray frame ${JSON.stringify(stray)}`)
  client.close()
}

async function errors() {
  begin('errors')
  const e1 = await rejection(call('no.such.function', { a: 1 }), 'an unknown function')
  assert.equal(e1.code, 'function_not_found', `code of an unknown function: ${e1.message}`)

  const e2 = await rejection(call('stream::get', { stream_name: 'chat', group_id: 'room-1' }), 'stream::get without item_id')
  assert.equal(e2.code, 'deserialization_error', `code of a bad payload: ${e2.message}`)
  assert.match(e2.message, /item_id/, 'the message names the missing field')

  const e3 = await rejection(call('stream::set', { stream_name: 'chat', group_id: 'room-1', data: 1 }), 'stream::set without item_id')
  assert.equal(e3.code, 'deserialization_error', `code of a bad set payload: ${e3.message}`)
  assert.match(e3.message, /item_id/, 'the set message names the missing field')
}

async function functionsAcrossWorkers() {
  begin('functions across workers')
  iii.registerFunction('node.echo', async (input) => ({ echoed: input, by: 'a' }))
  iii.registerFunction('node.fails', async () => { throw new Error('kaboom from a') })
  iii.registerFunction('node.nothing', async () => undefined)
  await settle()

  other = registerWorker(WORKER_URL, { ...OPTS, workerName: 'node-sdk-test-b' })
  assert.deepEqual(await other.trigger({ function_id: 'node.echo', payload: { q: [1, 'two'] } }), { echoed: { q: [1, 'two'] }, by: 'a' },
    'worker b calls a function of worker a')
  assert.deepEqual(await iii.trigger({ function_id: 'node.echo', payload: 'self' }), { echoed: 'self', by: 'a' }, 'worker a calls its own function')
  const e = await rejection(other.trigger({ function_id: 'node.fails', payload: {} }), 'a function that throws')
  assert.match(e.message, /kaboom from a/, `the thrower's message reaches the caller: ${e.code} ${e.message}`)
  assert.equal(await other.trigger({ function_id: 'node.nothing', payload: {} }), undefined, 'a function returning undefined')

  // And the other way: b serves, a calls.
  other.registerFunction('node.add', async ({ x, y }) => x + y)
  await settle(other)
  assert.equal(await iii.trigger({ function_id: 'node.add', payload: { x: 2, y: 40 } }), 42, 'worker a calls a function of worker b')
}

async function triggers() {
  begin('stream trigger')
  const fired = []
  let onFire
  iii.registerFunction('node.on_watched', async (payload) => {
    fired.push(payload)
    onFire?.()
    return null
  })
  iii.registerTrigger({ type: 'stream', function_id: 'node.on_watched', config: { stream_name: 'watched' } })
  await settle()
  const firedOnce = new Promise((r) => { onFire = r })
  await call('stream::set', { stream_name: 'unwatched', group_id: 'g', item_id: 'i0', data: 0 })
  await call('stream::set', { stream_name: 'watched', group_id: 'g', item_id: 'i1', data: { v: 1 } })
  await within(firedOnce, 'call of the stream trigger function')
  await sleep(200)
  assert.equal(fired.length, 1, `exactly one trigger call (the unwatched stream must not fire): ${JSON.stringify(fired)}`)
  frame(fired[0], 'watched', 'g', 'i1', { type: 'create', data: { v: 1 } }, 'stream trigger payload')

  begin('stream:join trigger')
  const joins = []
  iii.registerFunction('node.on_join', async (input) => {
    joins.push(input)
    return input.group_id === 'secret' ? { unauthorized: true } : { unauthorized: false }
  })
  iii.registerTrigger({ type: 'stream:join', function_id: 'node.on_join', config: {} })
  await settle()
  const client = await RawClient.connect()
  frame(await client.join('s-secret', 'chat', 'secret'), 'chat', 'secret', null, { type: 'unauthorized' }, 'a rejected join')
  assert.deepEqual(joins.at(-1), { subscription_id: 's-secret', stream_name: 'chat', group_id: 'secret', id: null, context: null }, 'join trigger payload')
  frame(await client.join('s-open', 'chat', 'room-2'), 'chat', 'room-2', null, { type: 'sync', data: [7] }, 'an allowed join')
  assert.deepEqual(joins.at(-1), { subscription_id: 's-open', stream_name: 'chat', group_id: 'room-2', id: null, context: null }, 'join trigger payload')
  frame(await client.join('s-item', 'chat', 'room-2', 'x'), 'chat', 'room-2', 'x', { type: 'sync', data: 7 }, 'an allowed item join')
  // The rejected subscription must not receive the secret group's writes.
  await call('stream::set', { stream_name: 'chat', group_id: 'secret', item_id: 's', data: 'hidden' })
  await call('stream::set', { stream_name: 'chat', group_id: 'room-2', item_id: 'y', data: 8 })
  frame(await client.next('create in room-2'), 'chat', 'room-2', 'y', { type: 'create', data: 8 }, 'the allowed group still gets events')
  const stray = await client.maybeNext(200)
  assert.equal(stray, null, `a rejected join still received ${JSON.stringify(stray)}`)
  client.close()
}

async function customStream() {
  begin('createStream')
  const groups = new Map() // group id -> Map(item id -> value), in insertion order
  const calls = []
  const group = (g) => groups.get(g) ?? groups.set(g, new Map()).get(g)
  groups.set('g1', new Map([['pre', { pre: true }]]))
  createStream(iii, 'custom', {
    async get(input) {
      calls.push(['get', input])
      return groups.get(input.group_id)?.get(input.item_id)
    },
    async set(input) {
      calls.push(['set', input])
      const old = groups.get(input.group_id)?.get(input.item_id)
      group(input.group_id).set(input.item_id, input.data)
      return { old_value: old ?? null, new_value: input.data }
    },
    async delete(input) {
      calls.push(['delete', input])
      const old = groups.get(input.group_id)?.get(input.item_id)
      groups.get(input.group_id)?.delete(input.item_id)
      return { old_value: old ?? null }
    },
    async list(input) {
      calls.push(['list', input])
      return [...(groups.get(input.group_id)?.values() ?? [])]
    },
    async listGroups(input) {
      calls.push(['listGroups', input])
      return [...groups.keys()].filter((g) => groups.get(g).size > 0)
    },
    async update(input) {
      calls.push(['update', input])
      throw new Error('createStream does not register update; the engine must not call it')
    },
  })
  await settle()
  const taken = () => calls.splice(0).map(([op, input]) => [op, input])

  const client = await RawClient.connect()
  frame(await client.join('c-1', 'custom', 'g1'), 'custom', 'g1', null, { type: 'sync', data: [{ pre: true }] },
    'the sync of a custom stream comes from its list function')
  assert.deepEqual(taken(), [['list', { stream_name: 'custom', group_id: 'g1' }]], 'the join called list(custom)')

  const item = { stream_name: 'custom', group_id: 'g1', item_id: 'a' }
  assert.deepEqual(await call('stream::set', { ...item, data: { n: 1 } }), { old_value: null, new_value: { n: 1 } }, 'custom set')
  assert.deepEqual(taken(), [['set', { ...item, data: { n: 1 } }]], 'custom set was called with the payload')
  assert.deepEqual(groups.get('g1').get('a'), { n: 1 }, 'custom set stored into the worker map')
  frame(await client.next('create frame'), 'custom', 'g1', 'a', { type: 'create', data: { n: 1 } }, 'create frame of a custom set')

  assert.deepEqual(await call('stream::get', item), { n: 1 }, 'custom get')
  assert.equal(await call('stream::get', { ...item, item_id: 'none' }), undefined, 'custom get of a missing item')
  assert.deepEqual(await call('stream::list', { stream_name: 'custom', group_id: 'g1' }), [{ pre: true }, { n: 1 }], 'custom list')
  assert.deepEqual(await call('stream::list_groups', { stream_name: 'custom' }), ['g1'], 'custom list_groups')
  assert.deepEqual(taken().map(([op]) => op), ['get', 'get', 'list', 'listGroups'], 'custom get/list/list_groups were called')

  const upd = await call('stream::update', { ...item, ops: [{ type: 'increment', path: 'n', by: 2 }, { type: 'set', path: 's', value: 'x' }] })
  assert.deepEqual(upd, { old_value: { n: 1 }, new_value: { n: 3, s: 'x' } }, 'stream::update on a custom stream')
  const ops = taken()
  assert.deepEqual(ops.map(([op]) => op), ['get', 'set'], `stream::update emulated with get + set: ${JSON.stringify(ops)}`)
  assert.deepEqual(ops[1][1], { ...item, data: { n: 3, s: 'x' } }, 'the emulated set payload')
  assert.deepEqual(groups.get('g1').get('a'), { n: 3, s: 'x' }, 'the update reached the worker map')
  frame(await client.next('update frame'), 'custom', 'g1', 'a', { type: 'update', data: { n: 3, s: 'x' } }, 'update frame of a custom update')

  assert.deepEqual(await call('stream::delete', item), { old_value: { n: 3, s: 'x' } }, 'custom delete')
  assert.deepEqual(taken(), [['delete', item]], 'custom delete was called')
  assert.equal(groups.get('g1').has('a'), false, 'custom delete removed from the worker map')
  frame(await client.next('delete frame'), 'custom', 'g1', 'a', { type: 'delete', data: { n: 3, s: 'x' } }, 'delete frame of a custom delete')

  const all = await call('stream::list_all', {})
  assert.ok(!all.stream.some((s) => s.id === 'custom'), `the custom stream's data must not land in the engine's store: ${JSON.stringify(all)}`)
  client.close()
}

async function closeHandshake() {
  begin('client close handshake')
  const client = await RawClient.connect()
  const rows = await call('stream::list', { stream_name: 'chat', group_id: 'room-1' })
  frame(await client.join('bye', 'chat', 'room-1'), 'chat', 'room-1', null, { type: 'sync', data: rows }, 'sync before close')
  // ws sends Close 1000 and emits 'close' once the server answered with its Close frame and
  // the TCP connection ended (or after its own 30 s timeout, with code 1006).
  const closed = new Promise((r) => client.ws.once('close', (code) => r(code)))
  const started = Date.now()
  client.ws.close(1000)
  const code = await within(closed, 'close event', 2000).catch(() => {
    throw new assert.AssertionError({
      message: `the engine did not complete the client's close handshake (RFC 6455 5.5.1) within 2 s ` +
        `(close answered: ${client.ws._closeFrameReceived === true})`,
    })
  })
  assert.equal(code, 1000, `the engine echoes the close code (after ${Date.now() - started} ms)`)
}

let failed = false
try {
  await builtins()
  await errors()
  await functionsAcrossWorkers()
  await triggers()
  await customStream()
  await closeHandshake()
  log('ALL PASSED')
} catch (e) {
  failed = true
  console.error(`FAIL in step "${step}": ${e?.stack ?? e}`)
  if (e?.code) console.error('  error code:', e.code)
}
await Promise.allSettled([iii.shutdown(), other?.shutdown()])
process.exit(failed ? 1 : 0)
