"""Small helpers for the browser tests: TOTP codes (RFC 6238) and an accessibility check."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import time


def totp(secret: str, *, at: float | None = None, step: int = 30, digits: int = 6) -> str:
    """RFC 6238 with HMAC-SHA1, as authenticator apps compute it."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // step)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**digits
    return str(code).zfill(digits)


# Runs in the page: form controls without an accessible name, images without alt, buttons and links without
# text, text whose contrast with its background is below WCAG AA, and missing landmarks.
A11Y_SCRIPT = r"""
() => {
  const problems = [];
  const visible = (el) => {
    const s = getComputedStyle(el);
    const r = el.getBoundingClientRect();
    return s.visibility !== 'hidden' && s.display !== 'none' && r.width > 1 && r.height > 1;
  };
  const name = (el) => {
    if (el.getAttribute('aria-label')) return el.getAttribute('aria-label');
    const by = el.getAttribute('aria-labelledby');
    if (by) return by.split(' ').map(id => (document.getElementById(id) || {}).textContent || '').join(' ');
    if (el.labels && el.labels.length) return Array.from(el.labels).map(l => l.textContent).join(' ');
    if (el.closest('label')) return el.closest('label').textContent;
    return el.getAttribute('title') || '';
  };
  for (const el of document.querySelectorAll('input:not([type=hidden]), select, textarea')) {
    if (!name(el).trim()) problems.push('unlabelled control: ' + el.outerHTML.slice(0, 120));
  }
  for (const el of document.querySelectorAll('button, a[href], summary')) {
    if (!visible(el)) continue;
    const text = (el.textContent || '').trim() || el.getAttribute('aria-label') || '';
    if (!text) problems.push('control without a name: ' + el.outerHTML.slice(0, 120));
  }
  for (const img of document.querySelectorAll('img')) {
    if (!img.hasAttribute('alt')) problems.push('image without alt: ' + img.outerHTML.slice(0, 120));
  }
  if (!document.documentElement.lang) problems.push('no lang on <html>');
  if (!document.querySelector('main')) problems.push('no <main> landmark');
  if (document.querySelectorAll('h1').length !== 1) problems.push('expected exactly one <h1>');

  const parse = (c) => { const m = c.match(/rgba?\(([^)]+)\)/); if (!m) return null;
    const p = m[1].split(',').map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = ({r, g, b}) => {
    const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  const background = (el) => { for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor); if (c && c.a > 0.5) return c; }
    return {r: 255, g: 255, b: 255, a: 1}; };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  while (walker.nextNode()) {
    const el = walker.currentNode.parentElement;
    if (!el || seen.has(el) || !walker.currentNode.textContent.trim() || !visible(el)) continue;
    if (el.closest('.visually-hidden, .skip-link')) continue;
    seen.add(el);
    const s = getComputedStyle(el);
    const fg = parse(s.color); if (!fg) continue;
    const L1 = lum(fg), L2 = lum(background(el));
    const ratio = (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05);
    const large = parseFloat(s.fontSize) >= 24 || (parseFloat(s.fontSize) >= 18.66 && Number(s.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) {
      problems.push(`contrast ${ratio.toFixed(2)}: "${walker.currentNode.textContent.trim().slice(0, 40)}"`);
    }
  }
  return problems;
}
"""


def accessibility_problems(page) -> list[str]:
    return page.evaluate(A11Y_SCRIPT)


def keyboard_reaches(page, selector: str, *, max_tabs: int = 80) -> bool:
    """Tab from the top of the page until the element matching ``selector`` has focus."""
    page.evaluate("document.activeElement && document.activeElement.blur()")
    target = page.locator(selector).first.element_handle()
    for _ in range(max_tabs):
        page.keyboard.press("Tab")
        if page.evaluate("(el) => document.activeElement === el", target):
            return True
    return False


def scroll_width(page) -> int:
    return page.evaluate("document.documentElement.scrollWidth")


def fits_width(page) -> bool:
    """The document is no wider than the viewport the test set (390 px for a phone). Compared with that fixed
    number, not ``window.innerWidth``: in mobile emulation the layout viewport grows to fit a too-wide page, so
    the window would always "fit"."""
    return scroll_width(page) <= page.viewport_size["width"]


def phone_width_problems(page, width: int = 390) -> str | None:
    """Render the current page at ``width`` px and say how wide the document is if it scrolls sideways; the
    viewport is put back afterwards."""
    previous = page.viewport_size
    page.set_viewport_size({"width": width, "height": 844})
    try:
        wide = scroll_width(page)
        return None if wide <= width else f"{page.url} is {wide}px wide at {width}px"
    finally:
        page.set_viewport_size(previous)
