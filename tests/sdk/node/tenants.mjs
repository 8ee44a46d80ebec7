// Runs the published npm `iii-sdk` against a streamhost with two tenants, `alpha` and `beta`.
//
// Usage: node tenants.mjs isolation|wrong-key
// Env: III_URL (worker socket), STREAMHOST_CLIENT_URL (client socket), STREAMHOST_KEY_A and
// STREAMHOST_KEY_B (the tenants' worker keys), STREAMHOST_TOKEN_A and STREAMHOST_TOKEN_B (client
// tokens), STREAMHOST_WRONG_KEY (a key no tenant has). Driven by tests/sdk_tenants.rs.
//
// iii-sdk 0.22 reads no III_TOKEN: a worker key goes in its `headers` option, or in the URL as
// `?token=`. It sends no namespace either, so III_NAMESPACE does not reach the engine.
// Exits 0 when every check passed, 1 (after printing what differed) otherwise.

import assert from 'node:assert/strict'
import { registerWorker } from 'iii-sdk'
import { createStream } from 'iii-sdk/helpers'
import WebSocket from 'ws'

const env = (name) => {
  const v = process.env[name]
  if (!v) {
    console.error(`FAIL: set ${name}`)
    process.exit(2)
  }
  return v
}
const WORKER_URL = env('III_URL')
const CLIENT_URL = env('STREAMHOST_CLIENT_URL')
const MODE = process.argv[2]
process.env.OTEL_ENABLED = 'false'

const WAIT_MS = 5000
const OPTS = { otel: { enabled: false }, enableMetricsReporting: false, invocationTimeoutMs: WAIT_MS }

setTimeout(() => {
  console.error(`FAIL: timed out in step "${step}"`)
  process.exit(3)
}, 25000).unref()

let step = 'connect'
const log = (...a) => console.log('[node]', ...a)
const begin = (name) => {
  step = name
  log('--', name)
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
const within = (p, what, ms = WAIT_MS) =>
  Promise.race([p, sleep(ms).then(() => Promise.reject(new Error(`no ${what} within ${ms} ms`)))])

/** Resolves once `cond()` holds; polled, so it needs no hook into the SDK. */
async function until(cond) {
  while (!cond()) await sleep(20)
}

/** A browser-like client on the client socket, with a tenant's token. */
class RawClient {
  static async connect({ path = '/', token } = {}) {
    const c = new RawClient()
    c.ws = new WebSocket(CLIENT_URL + path, token ? { headers: { Authorization: `Bearer ${token}` } } : {})
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

/** A server frame without its timestamp, offset and epoch. */
const bare = ({ timestamp, offset, epoch, ...rest }) => rest
const event = (streamName, groupId, id, ev) => ({ type: 'stream', streamName, groupId, id, event: ev })

async function noStray(client, who) {
  const stray = await client.maybeNext(200)
  assert.equal(stray, null, `${who} got a frame that was not for it: ${JSON.stringify(stray)}`)
}

const workers = []
const worker = (url, name, extra = {}) => {
  const w = registerWorker(url, { ...OPTS, workerName: name, ...extra })
  workers.push(w)
  return w
}
const call = (w, function_id, payload) => w.trigger({ function_id, payload })
const settle = (w) => call(w, 'stream::list_groups', { stream_name: '__settle__' })

async function isolation() {
  const [KEY_A, KEY_B] = [env('STREAMHOST_KEY_A'), env('STREAMHOST_KEY_B')]
  // Alpha's key as a header, beta's in the URL.
  const a = worker(WORKER_URL, 'node-alpha', { headers: { Authorization: `Bearer ${KEY_A}` } })
  const b = worker(`${WORKER_URL}/?token=${encodeURIComponent(KEY_B)}`, 'node-beta')
  await within(Promise.all([settle(a), settle(b)]), 'first answer on both workers')

  begin('stream functions, the same names in both tenants')
  // Alpha's client sends its token as a header, beta's in the URL.
  const ca = await RawClient.connect({ token: env('STREAMHOST_TOKEN_A') })
  const cb = await RawClient.connect({ path: `/?token=${encodeURIComponent(env('STREAMHOST_TOKEN_B'))}` })
  assert.deepEqual(bare(await ca.join('s', 'chat', 'room')), event('chat', 'room', null, { type: 'sync', data: [] }), 'alpha sync')
  assert.deepEqual(bare(await cb.join('s', 'chat', 'room')), event('chat', 'room', null, { type: 'sync', data: [] }), 'beta sync')
  const m1 = { stream_name: 'chat', group_id: 'room', item_id: 'm1' }

  assert.deepEqual(await call(a, 'stream::set', { ...m1, data: { by: 'alpha', n: 1 } }),
    { old_value: null, new_value: { by: 'alpha', n: 1 } }, 'alpha set')
  assert.deepEqual(await call(b, 'stream::set', { ...m1, data: { by: 'beta', n: 1 } }),
    { old_value: null, new_value: { by: 'beta', n: 1 } }, "beta's set of the same item finds nothing of alpha's")
  assert.deepEqual(bare(await ca.next('alpha create')), event('chat', 'room', 'm1', { type: 'create', data: { by: 'alpha', n: 1 } }), 'alpha create frame')
  assert.deepEqual(bare(await cb.next('beta create')), event('chat', 'room', 'm1', { type: 'create', data: { by: 'beta', n: 1 } }), 'beta create frame')
  assert.deepEqual(await call(a, 'stream::get', m1), { by: 'alpha', n: 1 }, 'alpha reads its own')
  assert.deepEqual(await call(b, 'stream::get', m1), { by: 'beta', n: 1 }, 'beta reads its own')

  await call(a, 'stream::set', { ...m1, item_id: 'm2', data: 'alpha only' })
  await call(a, 'stream::set', { stream_name: 'chat', group_id: 'alpha-room', item_id: 'x', data: 1 })
  assert.deepEqual(bare(await ca.next('alpha m2')), event('chat', 'room', 'm2', { type: 'create', data: 'alpha only' }), 'alpha m2 frame')
  assert.deepEqual(await call(a, 'stream::list', { stream_name: 'chat', group_id: 'room' }), [{ by: 'alpha', n: 1 }, 'alpha only'], 'alpha list')
  assert.deepEqual(await call(b, 'stream::list', { stream_name: 'chat', group_id: 'room' }), [{ by: 'beta', n: 1 }], 'beta list')
  assert.deepEqual([...(await call(a, 'stream::list_groups', { stream_name: 'chat' }))].sort(), ['alpha-room', 'room'], 'alpha groups')
  assert.deepEqual(await call(b, 'stream::list_groups', { stream_name: 'chat' }), ['room'], 'beta groups')
  assert.equal(await call(b, 'stream::get', { stream_name: 'chat', group_id: 'alpha-room', item_id: 'x' }), undefined, "beta cannot read alpha's group")
  const groupsOf = (all) => all.stream.map((s) => [s.id, [...s.groups].sort()])
  assert.deepEqual(groupsOf(await call(a, 'stream::list_all', {})), [['chat', ['alpha-room', 'room']]], 'alpha list_all')
  assert.deepEqual(groupsOf(await call(b, 'stream::list_all', {})), [['chat', ['room']]], 'beta list_all')

  const inc = (by) => ({ ...m1, ops: [{ type: 'increment', path: 'n', by }] })
  assert.deepEqual(await call(a, 'stream::update', inc(5)), { old_value: { by: 'alpha', n: 1 }, new_value: { by: 'alpha', n: 6 } }, 'alpha update')
  assert.deepEqual(await call(b, 'stream::update', inc(100)), { old_value: { by: 'beta', n: 1 }, new_value: { by: 'beta', n: 101 } }, 'beta update')
  assert.deepEqual(bare(await ca.next('alpha update')), event('chat', 'room', 'm1', { type: 'update', data: { by: 'alpha', n: 6 } }), 'alpha update frame')
  assert.deepEqual(bare(await cb.next('beta update')), event('chat', 'room', 'm1', { type: 'update', data: { by: 'beta', n: 101 } }), 'beta update frame')

  assert.deepEqual(await call(a, 'stream::delete', m1), { old_value: { by: 'alpha', n: 6 } }, 'alpha delete')
  assert.deepEqual(bare(await ca.next('alpha delete')), event('chat', 'room', 'm1', { type: 'delete', data: { by: 'alpha', n: 6 } }), 'alpha delete frame')
  assert.deepEqual(await call(b, 'stream::get', m1), { by: 'beta', n: 101 }, "alpha's delete leaves beta's item")

  assert.equal(await call(b, 'stream::send', { stream_name: 'chat', group_id: 'room', type: 'typing', data: 'b' }), null, 'beta send')
  assert.deepEqual(bare(await cb.next('beta event')), event('chat', 'room', null, { type: 'event', event: { type: 'typing', data: 'b' } }), 'beta event frame')
  await noStray(ca, "alpha's client")
  await noStray(cb, "beta's client")

  begin('stream trigger, the same function id in both tenants')
  const fired = { alpha: [], beta: [] }
  for (const [w, who] of [[a, 'alpha'], [b, 'beta']]) {
    w.registerFunction('app.on_chat', async (payload) => {
      fired[who].push(payload)
      return null
    })
    w.registerTrigger({ type: 'stream', function_id: 'app.on_chat', config: { stream_name: 'chat-watched' } })
    await settle(w)
  }
  const watched = { stream_name: 'chat-watched', group_id: 'g', item_id: 'i' }
  await call(a, 'stream::set', { ...watched, data: { v: 'alpha' } })
  await within(until(() => fired.alpha.length === 1), "alpha's trigger call")
  await call(b, 'stream::set', { ...watched, data: { v: 'beta' } })
  await within(until(() => fired.beta.length === 1), "beta's trigger call")
  await sleep(200)
  assert.deepEqual(fired.alpha.map(bare), [event('chat-watched', 'g', 'i', { type: 'create', data: { v: 'alpha' } })], "alpha's trigger saw alpha's write only")
  assert.deepEqual(fired.beta.map(bare), [event('chat-watched', 'g', 'i', { type: 'create', data: { v: 'beta' } })], "beta's trigger saw beta's write only")

  begin('createStream, the same stream name in both tenants')
  const maps = { alpha: new Map(), beta: new Map() }
  for (const [w, who] of [[a, 'alpha'], [b, 'beta']]) {
    const items = maps[who]
    createStream(w, 'chat-custom', {
      get: async ({ item_id }) => items.get(item_id),
      set: async ({ item_id, data }) => {
        const old = items.get(item_id) ?? null
        items.set(item_id, data)
        return { old_value: old, new_value: data }
      },
      delete: async ({ item_id }) => {
        const old = items.get(item_id) ?? null
        items.delete(item_id)
        return { old_value: old }
      },
      list: async () => [...items.values()],
      listGroups: async () => (items.size ? ['g'] : []),
      update: async () => { throw new Error('the engine must not call update') },
    })
    await settle(w)
  }
  const x = { stream_name: 'chat-custom', group_id: 'g', item_id: 'x' }
  assert.deepEqual(await call(a, 'stream::set', { ...x, data: { by: 'alpha', n: 1 } }), { old_value: null, new_value: { by: 'alpha', n: 1 } }, 'alpha custom set')
  assert.deepEqual(await call(b, 'stream::set', { ...x, data: { by: 'beta', n: 1 } }), { old_value: null, new_value: { by: 'beta', n: 1 } }, 'beta custom set')
  assert.deepEqual([...maps.alpha.values()], [{ by: 'alpha', n: 1 }], "alpha's writes reach alpha's worker only")
  assert.deepEqual([...maps.beta.values()], [{ by: 'beta', n: 1 }], "beta's writes reach beta's worker only")
  assert.deepEqual(await call(a, 'stream::get', x), { by: 'alpha', n: 1 }, 'alpha custom get')
  assert.deepEqual(await call(b, 'stream::get', x), { by: 'beta', n: 1 }, 'beta custom get')
  assert.deepEqual(await call(a, 'stream::update', { ...x, ops: [{ type: 'increment', path: 'n', by: 1 }] }),
    { old_value: { by: 'alpha', n: 1 }, new_value: { by: 'alpha', n: 2 } }, 'alpha custom update')
  assert.deepEqual(await call(b, 'stream::delete', x), { old_value: { by: 'beta', n: 1 } }, 'beta custom delete')
  assert.deepEqual(await call(a, 'stream::list', { stream_name: 'chat-custom', group_id: 'g' }), [{ by: 'alpha', n: 2 }], 'alpha custom list')
  assert.deepEqual(await call(b, 'stream::list', { stream_name: 'chat-custom', group_id: 'g' }), [], 'beta custom list')
  assert.deepEqual(bare(await ca.join('c', 'chat-custom', 'g')), event('chat-custom', 'g', null, { type: 'sync', data: [{ by: 'alpha', n: 2 }] }), "alpha's client syncs from alpha's worker")
  assert.deepEqual(bare(await cb.join('c', 'chat-custom', 'g')), event('chat-custom', 'g', null, { type: 'sync', data: [] }), "beta's client syncs from beta's worker")

  begin('markers for the engine-side check')
  await call(a, 'stream::set', { stream_name: 'chat', group_id: 'final', item_id: 'who', data: { tenant: 'alpha', sdk: 'node' } })
  await call(b, 'stream::set', { stream_name: 'chat', group_id: 'final', item_id: 'who', data: { tenant: 'beta', sdk: 'node' } })
  await noStray(ca, "alpha's client")
  await noStray(cb, "beta's client")
  ca.close()
  cb.close()
}

async function wrongKey() {
  const WRONG = env('STREAMHOST_WRONG_KEY')
  const logged = []
  const consoleError = console.error
  console.error = (...args) => {
    logged.push(args.map(String).join(' '))
    consoleError(...args)
  }
  // The SDK retries for ever by default; two retries bound the wait.
  const reconnectionConfig = { maxRetries: 2, initialDelayMs: 50, maxDelayMs: 200, backoffMultiplier: 2, jitterFactor: 0 }
  for (const [how, url, extra] of [
    ['header', WORKER_URL, { headers: { Authorization: `Bearer ${WRONG}` } }],
    ['?token=', `${WORKER_URL}/?token=${encodeURIComponent(WRONG)}`, {}],
  ]) {
    begin(`a wrong key as ${how}`)
    logged.length = 0
    const w = worker(url, `node-wrong-key-${how}`, { ...extra, reconnectionConfig })
    // `connectionState` is the SDK's own (not typed as public in 0.22).
    await within(until(() => w.connectionState === 'failed'), 'the SDK giving up', 10000)
    const refusals = logged.filter((l) => l.includes('Unexpected server response: 401'))
    assert.equal(refusals.length, 3, `the engine refused each of the 3 upgrades with 401:\n${logged.join('\n')}`)
    log(`refused 3 times: ${refusals[0]}`)
  }
  console.error = consoleError
}

let failed = false
try {
  if (MODE === 'isolation') await isolation()
  else if (MODE === 'wrong-key') await wrongKey()
  else throw new Error(`unknown mode ${MODE}: isolation|wrong-key`)
  log('ALL PASSED')
} catch (e) {
  failed = true
  console.error(`FAIL in step "${step}": ${e?.stack ?? e}`)
  if (e?.code) console.error('  error code:', e.code)
}
await Promise.allSettled(workers.map((w) => w.shutdown()))
process.exit(failed ? 1 : 0)
