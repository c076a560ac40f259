// Console behaviour that needs script: copy buttons, confirmations and the phone menu. Loaded from a file so the strict
// Content-Security-Policy (no inline script) holds.
(function () {
  'use strict'

  function copyText (target) {
    const text = ('value' in target && target.value !== undefined) ? target.value : target.textContent
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text)
    }
    // Plain-HTTP development: select and use the legacy command.
    const area = document.createElement('textarea')
    area.value = text
    area.setAttribute('readonly', '')
    area.className = 'visually-hidden'
    document.body.appendChild(area)
    area.select()
    document.execCommand('copy')
    area.remove()
    return Promise.resolve()
  }

  document.addEventListener('click', function (event) {
    const button = event.target.closest('[data-copy-target]')
    if (!button) return
    const target = document.getElementById(button.dataset.copyTarget)
    if (!target) return
    const label = button.textContent
    copyText(target).then(function () {
      button.textContent = 'Copied'
      button.setAttribute('aria-live', 'polite')
      window.setTimeout(function () { button.textContent = label }, 2000)
    }, function () {
      button.textContent = 'Select and copy manually'
    })
  })

  // Tabs (the example request in curl, Python and Node): arrow keys move between tabs, as WAI-ARIA's tab
  // pattern expects; only the selected tab is in the tab order.
  function selectTab (tab) {
    const list = tab.closest('[role=tablist]')
    for (const other of list.querySelectorAll('[role=tab]')) {
      const selected = other === tab
      other.setAttribute('aria-selected', selected ? 'true' : 'false')
      other.tabIndex = selected ? 0 : -1
      const panel = document.getElementById(other.getAttribute('aria-controls'))
      if (panel) panel.hidden = !selected
    }
  }

  document.addEventListener('click', function (event) {
    const tab = event.target.closest('[role=tab]')
    if (tab) selectTab(tab)
  })

  document.addEventListener('keydown', function (event) {
    const tab = event.target.closest && event.target.closest('[role=tab]')
    if (!tab || (event.key !== 'ArrowRight' && event.key !== 'ArrowLeft')) return
    const tabs = Array.from(tab.closest('[role=tablist]').querySelectorAll('[role=tab]'))
    const next = tabs[(tabs.indexOf(tab) + (event.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length]
    selectTab(next)
    next.focus()
    event.preventDefault()
  })

  // A tab bar wider than the screen starts scrolled to the current page's tab, so it is in view.
  for (const current of document.querySelectorAll('.subnav [aria-current=page]')) {
    const bar = current.closest('.subnav')
    if (bar.scrollWidth > bar.clientWidth) {
      bar.scrollLeft = current.offsetLeft - (bar.clientWidth - current.offsetWidth) / 2
    }
  }

  // Console navigation on a phone: the groups fold behind a "Menu" button that names the current page. The
  // CSS only folds them once this has run (.is-enhanced), so without script they stay in view.
  for (const nav of document.querySelectorAll('[data-console-nav]')) {
    const button = nav.querySelector('.console-nav-toggle')
    if (!button) continue
    const current = nav.querySelector('[aria-current=page]')
    const shown = button.querySelector('.console-nav-toggle-current')
    if (current && shown) shown.textContent = current.textContent
    const setOpen = function (open) {
      nav.classList.toggle('is-open', open)
      button.setAttribute('aria-expanded', open ? 'true' : 'false')
    }
    button.addEventListener('click', function () {
      setOpen(button.getAttribute('aria-expanded') !== 'true')
    })
    nav.addEventListener('keydown', function (event) {
      if (event.key === 'Escape' && button.getAttribute('aria-expanded') === 'true' &&
          getComputedStyle(button).display !== 'none') {
        setOpen(false)
        button.focus()
      }
    })
    nav.classList.add('is-enhanced')
  }

  document.addEventListener('submit', function (event) {
    const form = event.target
    if (form.dataset && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault()
    }
  })
})()
