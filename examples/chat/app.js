// The chat page: one @streamhost/client subscription to the room's group keeps the messages
// (item id -> message) live across reconnects; `typing` events come from stream::send.
import { StreamClient } from '/client/index.js'

const room = (location.hash.slice(1) || 'lobby').toLowerCase()
const $ = (id) => document.getElementById(id)
$('room').textContent = `#${room}`
$('name').value = localStorage.getItem('chat-name') || `guest-${Math.random().toString(36).slice(2, 6)}`

const { clientUrl } = await (await fetch('/config.json')).json()
const client = new StreamClient(clientUrl)
const messages = client.group('chat', room)

client.on('state', (state) => {
  $('status').textContent = state
  $('status').className = `status ${state}`
})

function render() {
  const list = messages.values().sort((a, b) => (a.id < b.id ? -1 : 1))
  $('messages').replaceChildren(
    ...list.map((m) => {
      const li = document.createElement('li')
      const who = document.createElement('b')
      who.textContent = m.name
      const when = document.createElement('time')
      when.textContent = new Date(m.at).toLocaleTimeString()
      li.append(who, when, document.createTextNode(m.text))
      return li
    }),
  )
  $('messages').lastElementChild?.scrollIntoView({ block: 'end' })
}
messages.on('state', render)

const typing = new Map() // name -> timer
messages.on('event', (e) => {
  if (e.type !== 'typing' || typeof e.data?.name !== 'string' || e.data.name === $('name').value) return
  clearTimeout(typing.get(e.data.name))
  typing.set(e.data.name, setTimeout(() => (typing.delete(e.data.name), showTyping()), 3000))
  showTyping()
})
function showTyping() {
  const names = [...typing.keys()]
  $('typing').textContent = names.length ? `${names.join(', ')} typing…` : ''
}

const post = (path, body) =>
  fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })

let lastTyping = 0
$('text').addEventListener('input', () => {
  if (Date.now() - lastTyping < 1500) return
  lastTyping = Date.now()
  post('/api/typing', { room, name: $('name').value })
})
$('compose').addEventListener('submit', async (ev) => {
  ev.preventDefault()
  localStorage.setItem('chat-name', $('name').value)
  const res = await post('/api/messages', { room, name: $('name').value, text: $('text').value })
  if (res.ok) $('text').value = ''
  else alert((await res.json()).error)
})
