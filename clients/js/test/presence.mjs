// Presence through @streamhost/client against a running engine (driven by tests/presence.rs).
// Usage: node --experimental-websocket presence.mjs ws://127.0.0.1:PORT
// Two clients join `chat/js` with presence: each must see the other join (in `members` and
// through `onPresence`), then the second closes and the first must see it leave. Prints one
// JSON line with what was seen; exits 1 on a timeout.

import { StreamClient } from '../src/index.js'

const url = process.argv[2]
const seen = []
const until = (check, what) =>
  new Promise((resolve, reject) => {
    const started = Date.now()
    const poll = () => {
      if (check()) return resolve()
      if (Date.now() - started > 10000) return reject(new Error(`timed out waiting for ${what}`))
      setTimeout(poll, 10)
    }
    poll()
  })

try {
  const ann = new StreamClient(url, { heartbeat: false })
  const annRoom = ann.group('chat', 'js', {
    presence: true,
    info: { name: 'ann' },
    onPresence: (c) => seen.push(`ann:${c.action}:${c.member?.info?.name ?? ''}`),
  })
  await until(() => annRoom.memberCount === 1, 'ann alone')
  const bob = new StreamClient(url, { heartbeat: false })
  const bobRoom = bob.group('chat', 'js', { presence: true, info: { name: 'bob' } })
  await until(() => annRoom.memberCount === 2 && bobRoom.memberCount === 2, 'both present')
  const bobNames = [...bobRoom.members.values()].map((m) => m.info.name)
  bob.close()
  await until(() => annRoom.memberCount === 1, 'bob gone')
  const annNames = [...annRoom.members.values()].map((m) => m.info.name)
  ann.close()
  console.log(JSON.stringify({ seen, bobNames, annNames }))
  process.exit(0)
} catch (e) {
  console.log(JSON.stringify({ error: String(e), seen }))
  process.exit(1)
}
