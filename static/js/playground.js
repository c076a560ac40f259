// The playground page: a chat over the playground's WebSocket (inference/consumers.py; protocol in
// docs/playground.md). Loaded from a file so the strict Content-Security-Policy (no inline script) holds.
// Everything the model or the person types is shown with textContent, never parsed as HTML.
(function () {
  'use strict'

  const root = document.getElementById('playground')
  if (!root) return

  const el = function (id) { return document.getElementById(id) }
  const modelSelect = el('pg-model')
  const systemBox = el('pg-system')
  const temperatureBox = el('pg-temperature')
  const maxTokensBox = el('pg-max-tokens')
  const ccaasBox = el('pg-ccaas')
  const channelSelect = el('pg-channel')
  const languageBox = el('pg-language')
  const customerBox = el('pg-customer')
  const log = el('pg-log')
  const statusLine = el('pg-status')
  const errorLine = el('pg-error')
  const compose = el('pg-compose')
  const messageBox = el('pg-message')
  const sendButton = el('pg-send')
  const stopButton = el('pg-stop')
  const resetButton = el('pg-reset')
  const exportButton = el('pg-export')
  const personaSelect = el('pg-persona')
  const personaButton = el('pg-persona-turn')
  const gauge = el('pg-sentiment')
  const gaugeMeter = el('pg-sentiment-meter')
  const gaugeValue = el('pg-sentiment-value')
  const banner = el('pg-escalation')
  const personaData = el('pg-personas')
  const personas = personaData ? JSON.parse(personaData.textContent) : {} // id -> the customer's lines
  const historyPanel = el('pg-history')
  const historyUrl = historyPanel ? historyPanel.dataset.url : '' // set only when the organisation keeps transcripts
  const historyList = el('pg-history-list')
  const historyStatus = el('pg-history-status')
  const historyRefresh = el('pg-history-refresh')

  let maxBytes = parseInt(root.dataset.maxBytes, 10) || 65536
  const encoder = new TextEncoder()

  // Close codes after which reconnecting cannot help (docs/playground.md).
  const FINAL_CLOSES = {
    4401: 'You are signed out. Sign in again to use the playground.',
    4403: 'Your role no longer allows the playground in this organisation.',
    4404: 'This organisation’s playground is not available to you.'
  }
  const FLOODING = 4429
  const BACKOFF_MIN_MS = 500
  const BACKOFF_MAX_MS = 30000
  const PING_EVERY_MS = 25000

  let socket = null
  let attempts = 0
  let reconnectTimer = null
  let pingTimer = null
  let finalClose = false
  let ready = false
  let models = {} // id -> {input_per_1k_aud, output_per_1k_aud, max_model_len}

  // The conversation: what was said, with each reply's figures. Kept in the page only.
  let history = [] // {role, content, stats?}
  let current = null // the reply in flight: {id, entry, textNode, item}
  let turnCounter = 0
  let personaTurns = 0 // lines the persona has said in this conversation
  let trail = [] // customer-conversation mode: each customer turn's sentiment and the rule's decision
  let escalation = null // the first decision that escalated: {turn, reason}
  // This chat session's id, sent with every message: the organisation's kept transcripts group its turns by it
  // (the History panel). A new one on Reset; a re-opened conversation continues under its own.
  let conversationId = newConversationId()

  // --- the socket -------------------------------------------------------------------------------
  function socketUrl () {
    const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:'
    return scheme + '//' + window.location.host + root.dataset.socketPath
  }

  function connect () {
    reconnectTimer = null
    setStatus(attempts ? 'Reconnecting…' : 'Connecting…')
    try {
      socket = new WebSocket(socketUrl())
    } catch (e) {
      scheduleReconnect()
      return
    }
    socket.addEventListener('message', function (event) { onFrame(event.data) })
    socket.addEventListener('close', onClose)
  }

  function scheduleReconnect (minimumMs) {
    if (finalClose || reconnectTimer) return
    // Exponential backoff with jitter, so a restarted server isn't met by every page at once.
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, attempts))
    const delay = Math.max(minimumMs || 0, base / 2 + Math.random() * base / 2)
    attempts += 1
    setStatus('Connection lost. Reconnecting in ' + Math.ceil(delay / 1000) + ' s…')
    reconnectTimer = window.setTimeout(connect, delay)
  }

  function onClose (event) {
    ready = false
    socket = null
    window.clearInterval(pingTimer)
    if (current) endReply({ interrupted: true })
    updateButtons()
    if (FINAL_CLOSES[event.code]) {
      finalClose = true
      setStatus(FINAL_CLOSES[event.code])
      showError(FINAL_CLOSES[event.code])
      return
    }
    scheduleReconnect(event.code === FLOODING ? BACKOFF_MAX_MS : 0)
  }

  function send (frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false
    socket.send(JSON.stringify(frame))
    return true
  }

  // --- frames from the server -------------------------------------------------------------------
  function onFrame (raw) {
    let frame
    try {
      frame = JSON.parse(raw)
    } catch (e) {
      return
    }
    switch (frame.type) {
      case 'ready': onReady(frame); break
      case 'sentiment': onSentiment(frame); break
      case 'start': if (current && frame.id === current.id) current.requestId = frame.request_id; break
      case 'delta': if (current && frame.id === current.id) appendText(frame.content); break
      case 'done': if (current && frame.id === current.id) endReply({ done: frame }); break
      case 'error': onError(frame); break
      default: break // pong, and anything newer than this page
    }
  }

  function onReady (frame) {
    ready = true
    attempts = 0
    maxBytes = frame.max_message_bytes || maxBytes
    models = {}
    const chosen = modelSelect.value
    modelSelect.textContent = ''
    frame.models.forEach(function (model) {
      models[model.id] = model
      const option = document.createElement('option')
      option.value = model.id
      option.textContent = model.id
      modelSelect.appendChild(option)
    })
    if (models[chosen]) modelSelect.value = chosen
    if (!frame.models.length) {
      const option = document.createElement('option')
      option.value = ''
      option.textContent = 'No model is available right now'
      modelSelect.appendChild(option)
    }
    setStatus(frame.models.length ? 'Connected.' : 'Connected, but no model is being served right now.')
    window.clearInterval(pingTimer)
    pingTimer = window.setInterval(function () { send({ type: 'ping' }) }, PING_EVERY_MS)
    updateButtons()
  }

  function onError (frame) {
    const message = frame.message || 'Something went wrong.'
    if (current && frame.id === current.id) {
      current.error = message
      if (!current.requestId) endReply({ refused: frame }) // refused before the reply began
      return
    }
    showError(message)
  }

  // A customer turn was scored: the gauge shows it, the customer's message carries it, and the banner appears
  // when the organisation's rule hands the conversation to a person.
  function onSentiment (frame) {
    if (!current || frame.id !== current.id) return
    const entry = { turn: frame.turn, score: frame.score, label: frame.label, escalate: frame.escalate.escalate,
      reason: frame.escalate.reason || null, request_id: frame.request_id }
    trail.push(entry)
    current.sentiment = entry
    current.customer.sentiment = { score: frame.score, label: frame.label }
    showSentiment(frame.score, frame.label)
    const tag = document.createElement('p')
    tag.className = 'pg-stats muted'
    tag.textContent = 'Sentiment ' + describeScore(frame.score, frame.label)
    current.customerItem.appendChild(tag)
    if (entry.escalate && !escalation) {
      escalation = { turn: frame.turn, reason: entry.reason }
      banner.textContent = 'Escalate to a person: ' + (entry.reason || 'the organisation’s rule fired') +
        ' (customer turn ' + frame.turn + ').'
      banner.hidden = false
    }
  }

  function describeScore (score, label) {
    return label + ' (' + (score > 0 ? '+' : '') + score.toFixed(2) + ')'
  }

  function showSentiment (score, label) {
    gauge.hidden = false
    gaugeMeter.value = score
    gaugeMeter.textContent = describeScore(score, label) // read where <meter> is not supported
    gaugeValue.textContent = describeScore(score, label)
  }

  function clearSentiment () {
    trail = []
    escalation = null
    personaTurns = 0
    banner.hidden = true
    banner.textContent = ''
    gauge.hidden = true
    gaugeMeter.value = 0
    gaugeValue.textContent = 'No customer turn yet'
  }

  // --- the conversation -------------------------------------------------------------------------
  function addMessage (role, content) {
    const item = document.createElement('li')
    item.className = 'pg-message pg-' + role
    const who = document.createElement('p')
    who.className = 'pg-role'
    who.textContent = role === 'user' ? (customerConversation() ? 'Customer' : 'You') : 'Model'
    const body = document.createElement('p')
    body.className = 'pg-content'
    const text = document.createTextNode(content)
    body.appendChild(text)
    item.appendChild(who)
    item.appendChild(body)
    log.appendChild(item)
    item.scrollIntoView({ block: 'end' })
    return { item: item, text: text }
  }

  function appendText (content) {
    current.text.appendData(content)
    current.entry.content += content
    if (current.item.getBoundingClientRect().bottom > window.innerHeight) current.item.scrollIntoView({ block: 'end' })
  }

  function buildMessages (userText) {
    const messages = []
    const system = systemBox.value.trim()
    if (system) messages.push({ role: 'system', content: system })
    history.forEach(function (entry) {
      if (entry.content) messages.push({ role: entry.role, content: entry.content })
    })
    messages.push({ role: 'user', content: userText })
    return messages
  }

  function onSubmit (event) {
    event.preventDefault()
    sendText(messageBox.value.trim())
  }

  // The persona's next line, sent as the customer's turn (its lines in order, then from the top).
  function personaTurn () {
    const lines = personas[personaSelect.value]
    if (!lines || !lines.length || current || !ready) return
    if (sendText(lines[personaTurns % lines.length], { persona: personaSelect.value })) personaTurns += 1
  }

  function sendText (text, options) {
    hideError()
    if (!text || current || !ready) return false
    const model = modelSelect.value
    if (!model) {
      showError('Choose a model first.')
      return false
    }
    turnCounter += 1
    const id = 't' + Date.now().toString(36) + '-' + turnCounter
    const frame = {
      type: 'chat',
      id: id,
      model: model,
      messages: buildMessages(text),
      temperature: numberOrNull(temperatureBox.value),
      max_tokens: integerOrNull(maxTokensBox.value)
    }
    const conversation = customerConversation()
    if (conversation) frame.ccaas = conversation
    frame.conversation = conversationId
    const size = encoder.encode(JSON.stringify(frame)).length
    if (size > maxBytes) {
      showError('This conversation is too long to send (' + size + ' of at most ' + maxBytes +
        ' bytes). Reset it, or shorten the system prompt or the message.')
      return false
    }
    if (!send(frame)) {
      showError('Not connected yet. Try again in a moment.')
      return false
    }
    const customer = { role: 'user', content: text }
    if (options && options.persona) customer.persona = options.persona
    history.push(customer)
    const asked = addMessage('user', text)
    const entry = { role: 'assistant', content: '', model: model }
    const shown = addMessage('assistant', '')
    shown.item.setAttribute('aria-busy', 'true')
    current = { id: id, entry: entry, text: shown.text, item: shown.item, requestId: null, error: null, asked: text,
      customer: customer, customerItem: asked.item, persona: Boolean(options && options.persona) }
    if (!current.persona) messageBox.value = ''
    setStatus('The model is answering…')
    updateButtons()
    return true
  }

  function endReply (outcome) {
    const reply = current
    current = null
    reply.item.removeAttribute('aria-busy')
    const stats = document.createElement('p')
    stats.className = 'pg-stats muted'
    if (outcome.done) {
      const d = outcome.done
      reply.entry.stats = {
        request_id: d.request_id,
        prompt_tokens: d.prompt_tokens,
        completion_tokens: d.completion_tokens,
        ttft_ms: d.ttft_ms,
        total_ms: d.total_ms,
        cost_aud: d.cost_aud,
        stopped: d.stopped,
        finish_reason: d.finish_reason
      }
      history.push(reply.entry)
      // A new conversation's first reply is stored a moment later (the transcripts are written in the
      // background): list it then.
      if (historyUrl && !historyList.querySelector('[aria-current="true"]')) window.setTimeout(loadHistory, 3000)
      stats.textContent = [
        d.completion_tokens + ' tokens out, ' + d.prompt_tokens + ' in',
        'first token ' + (d.ttft_ms === null ? '—' : Math.round(d.ttft_ms) + ' ms'),
        'total ' + Math.round(d.total_ms) + ' ms',
        d.cost_shown || 'A$' + d.cost_aud
      ].join(' · ') + (d.stopped ? ' · stopped' : '') + (reply.error ? ' · ' + reply.error : '')
      setStatus('Reply complete: ' + stats.textContent)
    } else if (outcome.refused) {
      // Nothing was generated: the message leaves the conversation and goes back in the box to send again.
      history.pop()
      if (reply.sentiment) trail.splice(trail.indexOf(reply.sentiment), 1) // scored, but the turn is not kept
      if (reply.persona) personaTurns -= 1 // the persona says it again next time
      else if (!messageBox.value) messageBox.value = reply.asked
      reply.item.classList.add('pg-refused')
      stats.textContent = outcome.refused.message
      setStatus('Refused: ' + outcome.refused.message)
    } else {
      if (reply.entry.content) history.push(reply.entry)
      stats.textContent = 'The connection dropped during this reply; what was generated is billed.'
    }
    reply.item.appendChild(stats)
    updateButtons()
  }

  function stop () {
    if (current) send({ type: 'stop', id: current.id })
  }

  function clearConversation () {
    stop()
    if (current) endReply({ interrupted: true })
    history = []
    log.textContent = ''
    clearSentiment()
    hideError()
  }

  function reset () {
    clearConversation()
    conversationId = newConversationId()
    markOpened()
    setStatus(ready ? 'Conversation cleared.' : statusLine.textContent)
    loadHistory()
    messageBox.focus()
  }

  // --- history (only when the organisation keeps transcripts) --------------------------------------
  function newConversationId () {
    const bytes = new Uint8Array(16)
    window.crypto.getRandomValues(bytes)
    return 'pg-' + Array.prototype.map.call(bytes, function (b) { return ('0' + b.toString(16)).slice(-2) }).join('')
  }

  function getJson (url) {
    return window.fetch(url, { credentials: 'same-origin', headers: { Accept: 'application/json' } })
      .then(function (response) {
        const type = response.headers.get('content-type') || ''
        if (!response.ok || type.indexOf('application/json') !== 0) {
          const error = new Error('HTTP ' + response.status)
          error.status = response.status
          throw error
        }
        return response.json()
      })
  }

  function when (iso) {
    const date = new Date(iso)
    return isNaN(date) ? '' : date.toLocaleString()
  }

  function loadHistory () {
    if (!historyUrl) return
    historyStatus.textContent = 'Loading your conversations…'
    getJson(historyUrl).then(function (data) {
      historyList.textContent = ''
      data.conversations.forEach(function (item) {
        const li = document.createElement('li')
        const button = document.createElement('button')
        button.type = 'button'
        button.className = 'pg-history-open'
        button.dataset.conversation = item.id
        const words = document.createElement('span')
        words.className = 'pg-history-words'
        words.textContent = item.preview || '(no message)'
        const meta = document.createElement('span')
        meta.className = 'pg-history-meta'
        meta.textContent = when(item.started) + ' · ' + item.model + ' · ' + item.turns + (item.turns === 1 ? ' turn' : ' turns')
        button.appendChild(words)
        button.appendChild(meta)
        button.addEventListener('click', function () { reopen(item.id) })
        li.appendChild(button)
        historyList.appendChild(li)
      })
      markOpened()
      historyStatus.textContent = data.conversations.length
        ? 'Your conversations, most recent first. Open one to continue it.'
        : 'No conversations kept yet. A conversation appears here shortly after its first reply.'
    }).catch(function () {
      historyStatus.textContent = 'Your history could not be loaded. Try Refresh.'
    })
  }

  function markOpened () {
    if (!historyList) return
    Array.prototype.forEach.call(historyList.querySelectorAll('.pg-history-open'), function (button) {
      if (button.dataset.conversation === conversationId) button.setAttribute('aria-current', 'true')
      else button.removeAttribute('aria-current')
    })
  }

  function reopen (id) {
    if (current) {
      showError('Wait for the reply to finish, or stop it, before opening another conversation.')
      return
    }
    historyStatus.textContent = 'Opening…'
    getJson(historyUrl + encodeURIComponent(id) + '/').then(function (data) {
      clearConversation()
      conversationId = data.id
      systemBox.value = ''
      data.messages.forEach(function (message, index) {
        if (message.role === 'system') {
          if (index === 0) systemBox.value = message.content
          return
        }
        const entry = { role: message.role, content: message.content }
        if (message.role === 'assistant') entry.model = data.model
        history.push(entry)
        addMessage(message.role, message.content)
      })
      if (models[data.model] || Array.prototype.some.call(modelSelect.options, function (o) { return o.value === data.model })) {
        modelSelect.value = data.model
      }
      markOpened()
      historyStatus.textContent = 'Opened the conversation of ' + when(data.started) + '. Your next message continues it.'
      setStatus('Conversation re-opened.')
      updateButtons()
      messageBox.focus()
    }).catch(function (error) {
      historyStatus.textContent = error.status === 410
        ? 'That conversation can no longer be read.'
        : 'That conversation could not be opened. Try Refresh.'
    })
  }

  function exportJson () {
    const data = {
      exported_at: new Date().toISOString(),
      organisation: root.dataset.tenant,
      model: modelSelect.value,
      system_prompt: systemBox.value,
      temperature: numberOrNull(temperatureBox.value),
      max_tokens: integerOrNull(maxTokensBox.value),
      customer_conversation: customerConversation(),
      persona: personaSelect.value || null,
      messages: history,
      sentiment: trail,
      escalation: escalation
    }
    const blob = new Blob([JSON.stringify(data, null, 2)], { type: 'application/json' })
    const link = document.createElement('a')
    link.href = URL.createObjectURL(blob)
    link.download = 'playground-' + root.dataset.tenant + '-' + data.exported_at.replace(/[:.]/g, '-') + '.json'
    document.body.appendChild(link)
    link.click()
    link.remove()
    window.setTimeout(function () { URL.revokeObjectURL(link.href) }, 1000)
  }

  // --- small things -----------------------------------------------------------------------------
  function customerConversation () {
    if (!ccaasBox.checked) return null
    const conversation = { channel: channelSelect.value, language: languageBox.value.trim() || 'en-AU' }
    const customer = customerBox.value.trim()
    if (customer) conversation.customer_id = customer
    return conversation
  }

  function numberOrNull (value) {
    const n = parseFloat(value)
    return isNaN(n) ? null : n
  }

  function integerOrNull (value) {
    const n = parseInt(value, 10)
    return isNaN(n) ? null : n
  }

  function setStatus (text) { statusLine.textContent = text }

  function showError (text) {
    errorLine.textContent = text
    errorLine.hidden = false
  }

  function hideError () {
    errorLine.hidden = true
    errorLine.textContent = ''
  }

  function updateButtons () {
    sendButton.disabled = !ready || current !== null
    stopButton.disabled = current === null
    exportButton.disabled = history.length === 0
    personaButton.hidden = !ccaasBox.checked || !personaSelect.value
    personaButton.disabled = !ready || current !== null
  }

  compose.addEventListener('submit', onSubmit)
  messageBox.addEventListener('keydown', function (event) {
    // Enter writes a new line; Ctrl+Enter or Cmd+Enter sends.
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
      event.preventDefault()
      compose.requestSubmit()
    }
  })
  stopButton.addEventListener('click', stop)
  personaButton.addEventListener('click', personaTurn)
  ccaasBox.addEventListener('change', updateButtons)
  personaSelect.addEventListener('change', function () {
    personaTurns = 0 // a new persona starts from its first line
    updateButtons()
  })
  resetButton.addEventListener('click', reset)
  if (historyRefresh) historyRefresh.addEventListener('click', loadHistory)
  exportButton.addEventListener('click', exportJson)
  el('pg-settings').addEventListener('submit', function (event) { event.preventDefault() })
  window.addEventListener('online', function () {
    if (!socket && !finalClose) {
      window.clearTimeout(reconnectTimer)
      reconnectTimer = null
      connect()
    }
  })

  updateButtons()
  connect()
  loadHistory()
})()
