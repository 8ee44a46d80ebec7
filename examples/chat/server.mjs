// The chat's backend: an iii-sdk worker that writes messages into the stream `chat`, and a
// tiny HTTP server for the page. The page reads the room live from streamhost's client socket
// with @streamhost/client; it writes through POST /api/messages, because the client socket
// only subscribes (writes go through workers, where an app checks them).
//
//   III_URL                 the worker socket (default ws://127.0.0.1:49134)
//   STREAMHOST_CLIENT_URL   the client socket the page connects to (default ws://127.0.0.1:3112)
//   PORT                    this server's port (default 8080; 0 picks a free one)
import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { registerWorker } from 'iii-sdk'

const here = path.dirname(fileURLToPath(import.meta.url))
const WORKER_URL = process.env.III_URL ?? 'ws://127.0.0.1:49134'
const CLIENT_URL = process.env.STREAMHOST_CLIENT_URL ?? 'ws://127.0.0.1:3112'
const PORT = Number(process.env.PORT ?? 8080)
const MAX_BODY = 4096
const MAX_NAME = 40
const MAX_TEXT = 500
const ROOM = /^[a-z0-9-]{1,40}$/

const iii = registerWorker(WORKER_URL, {
  workerName: 'example-chat',
  otel: { enabled: false },
  enableMetricsReporting: false,
  invocationTimeoutMs: 5000,
})

// What the page may fetch: its own files and the client library, nothing else.
const files = {
  '/': [path.join(here, 'index.html'), 'text/html'],
  '/app.js': [path.join(here, 'app.js'), 'text/javascript'],
  '/style.css': [path.join(here, 'style.css'), 'text/css'],
  '/client/index.js': [path.join(here, '../../clients/js/src/index.js'), 'text/javascript'],
}

let seq = 0
/** Ids that sort in the order the messages came. */
const nextId = () => `${Date.now().toString(36).padStart(9, '0')}-${(seq++ % 1e6).toString(36).padStart(4, '0')}`

function reply(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
}

function readJson(req) {
  return new Promise((ok, fail) => {
    let size = 0
    const chunks = []
    req.on('data', (c) => {
      size += c.length
      if (size > MAX_BODY) {
        fail(Object.assign(new Error(`the body is over ${MAX_BODY} bytes`), { status: 413 }))
        req.destroy()
      } else chunks.push(c)
    })
    req.on('end', () => {
      try {
        ok(JSON.parse(Buffer.concat(chunks).toString('utf8')))
      } catch {
        fail(Object.assign(new Error('the body is not JSON'), { status: 400 }))
      }
    })
  })
}

/** A message or a typing notice from the page: `{room, name, text?}`, checked and bounded. */
function checked(body, needText) {
  const { room, name, text } = body ?? {}
  if (typeof room !== 'string' || !ROOM.test(room)) throw Object.assign(new Error('room: 1-40 of a-z, 0-9, -'), { status: 400 })
  if (typeof name !== 'string' || !name.trim() || name.length > MAX_NAME) throw Object.assign(new Error(`name: 1-${MAX_NAME} characters`), { status: 400 })
  if (needText && (typeof text !== 'string' || !text.trim() || text.length > MAX_TEXT)) throw Object.assign(new Error(`text: 1-${MAX_TEXT} characters`), { status: 400 })
  return { room, name: name.trim(), text: needText ? text.trim() : undefined }
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x')
  try {
    if (req.method === 'GET' && url.pathname === '/config.json') return reply(res, 200, { clientUrl: CLIENT_URL })
    if (req.method === 'GET' && files[url.pathname]) {
      const [file, type] = files[url.pathname]
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' })
      return fs.createReadStream(file).pipe(res)
    }
    if (req.method === 'POST' && url.pathname === '/api/messages') {
      const m = checked(await readJson(req), true)
      const id = nextId()
      const data = { id, name: m.name, text: m.text, at: Date.now() }
      await iii.trigger({ function_id: 'stream::set', payload: { stream_name: 'chat', group_id: m.room, item_id: id, data } })
      return reply(res, 201, data)
    }
    if (req.method === 'POST' && url.pathname === '/api/typing') {
      const m = checked(await readJson(req), false)
      await iii.trigger({ function_id: 'stream::send', payload: { stream_name: 'chat', group_id: m.room, type: 'typing', data: { name: m.name } } })
      return reply(res, 202, {})
    }
    reply(res, 404, { error: `no ${req.method} ${url.pathname}` })
  } catch (e) {
    reply(res, e.status ?? 502, { error: e.status ? e.message : `streamhost: ${e.message ?? e}` })
  }
})

server.listen(PORT, '127.0.0.1', () => {
  console.log(`chat: open http://127.0.0.1:${server.address().port}/ (streamhost clients at ${CLIENT_URL}, workers at ${WORKER_URL})`)
})
