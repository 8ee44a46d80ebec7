// Drives Debian's chromium for tests/browser.rs. It serves clients/js/src and this directory
// over HTTP on a free loopback port, opens page.html in a headless chromium, then answers
// one JSON line per command read from stdin:
//   {"id":1,"eval":"<expression>"}       -> {"id":1,"ok":<its awaited value>} or {"id":1,"err":"..."}
//   {"id":2,"screenshot":"/tmp/x.png"}   -> {"id":2,"ok":{"colours":N}} (distinct colours in it)
//   {"id":3,"goto":"/x.html"}            -> {"id":3,"ok":true} (a path on this server, or a URL)
// The first line it prints is {"ready":true,"url":"http://127.0.0.1:PORT"}. It exits when
// stdin closes. The page's console goes to stderr, so that a failing test shows it.
import http from 'node:http'
import fs from 'node:fs'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import puppeteer from 'puppeteer-core'

const here = path.dirname(fileURLToPath(import.meta.url))
const repo = path.resolve(here, '../..')
// URL prefix -> directory. Nothing outside these is served.
const roots = [
  ['/client/', path.join(repo, 'clients/js/src')],
  ['/examples/', path.join(repo, 'examples')],
  ['/', path.join(here, 'page')],
]
const types = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.html': 'text/html', '.css': 'text/css' }

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://x')
  let pathname = decodeURIComponent(url.pathname)
  if (pathname.endsWith('/')) pathname += 'index.html'
  for (const [prefix, dir] of roots) {
    if (!pathname.startsWith(prefix)) continue
    const file = path.resolve(dir, '.' + pathname.slice(prefix.length - 1))
    if (!file.startsWith(dir + path.sep)) break
    return fs.readFile(file, (err, body) => {
      if (err) {
        res.writeHead(404).end('not found')
        return
      }
      res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' })
      res.end(body)
    })
  }
  res.writeHead(404).end('not found')
})
await new Promise((ok) => server.listen(0, '127.0.0.1', ok))
const base = `http://127.0.0.1:${server.address().port}`

const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run'],
})
const page = await browser.newPage()
page.on('console', (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`))
page.on('pageerror', (e) => process.stderr.write(`[page error] ${e.message}\n`))
await page.goto(`${base}/index.html`)
await page.waitForFunction('window.t !== undefined')

/** How many distinct colours a PNG has (a blank page has one), counted by chromium itself. */
async function colours(png) {
  const other = await browser.newPage()
  try {
    return await other.evaluate(async (b64) => {
      const img = new Image()
      img.src = `data:image/png;base64,${b64}`
      await img.decode()
      const canvas = new OffscreenCanvas(img.width, img.height)
      const ctx = canvas.getContext('2d')
      ctx.drawImage(img, 0, 0)
      const px = new Uint32Array(ctx.getImageData(0, 0, img.width, img.height).data.buffer)
      return new Set(px).size
    }, Buffer.from(png).toString('base64'))
  } finally {
    await other.close()
  }
}

const reply = (v) => process.stdout.write(JSON.stringify(v) + '\n')
reply({ ready: true, url: base })

let queue = Promise.resolve()
const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  queue = queue.then(async () => {
    let cmd
    try {
      cmd = JSON.parse(line)
    } catch (e) {
      return reply({ err: `not JSON: ${line}` })
    }
    try {
      if (cmd.eval !== undefined) {
        const ok = await page.evaluate(`(async () => (${cmd.eval}))()`)
        reply({ id: cmd.id, ok: ok ?? null })
      } else if (cmd.screenshot !== undefined) {
        const png = await page.screenshot({ fullPage: true })
        fs.writeFileSync(cmd.screenshot, png)
        reply({ id: cmd.id, ok: { colours: await colours(png) } })
      } else if (cmd.goto !== undefined) {
        await page.goto(cmd.goto.startsWith('http') ? cmd.goto : base + cmd.goto)
        reply({ id: cmd.id, ok: true })
      } else {
        reply({ id: cmd.id, err: `unknown command ${line}` })
      }
    } catch (e) {
      reply({ id: cmd.id, err: String(e?.stack ?? e) })
    }
  })
})
rl.on('close', async () => {
  await queue
  await browser.close().catch(() => {})
  server.close()
  process.exit(0)
})
