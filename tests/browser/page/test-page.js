// The page tests/browser.rs drives: @streamhost/client as an app would use it, with what it
// saw recorded for the test to read (`window.t`).
import { StreamClient } from '/client/index.js'

const t = {
  client: null,
  subs: new Map(),
  /** Per subscription key: every `event` frame and change the app was given, in order. */
  events: new Map(),
  changes: new Map(),
  refusals: new Map(),
  closes: [],

  start(url, options = {}) {
    t.client = new StreamClient(url, options)
    t.client.on('close', (c) => t.closes.push(c.code))
    return true
  },

  watch(key, sub) {
    t.subs.set(key, sub)
    t.events.set(key, [])
    t.changes.set(key, [])
    t.refusals.set(key, 0)
    sub.on('unauthorized', () => t.refusals.set(key, t.refusals.get(key) + 1))
    sub.on('event', (e) => t.events.get(key).push({ type: e.type, data: e.data, id: e.id, offset: e.offset }))
    sub.on('change', (c) => t.changes.get(key).push({ type: c.type, id: c.id, offset: c.offset }))
    return key
  },

  group(stream, group) {
    return t.watch(`${stream}/${group}`, t.client.group(stream, group))
  },

  item(stream, group, id) {
    return t.watch(`${stream}/${group}/${id}`, t.client.item(stream, group, id))
  },

  leave(key) {
    t.subs.get(key).leave()
    return true
  },

  /** What a test compares: the state, every event, and the client's counters. */
  view(key) {
    const sub = t.subs.get(key)
    return {
      ready: sub.ready,
      pending: sub.pending,
      unauthorized: t.refusals.get(key),
      items: Object.fromEntries(sub.items),
      value: sub.value,
      offset: sub.offset,
      epoch: sub.epoch,
      events: t.events.get(key),
      changes: t.changes.get(key),
      stats: sub.stats,
      client: { state: t.client.state, ...t.client.stats, closes: t.closes },
    }
  },
}
window.t = t
