"""The brand's HTML part for every email Wattle sends, made from its plain-text part: the paragraphs, links
made clickable, in one layout (inline styles: mail clients ignore style sheets). Django-free; the apps attach
it (``tenants.emails.branded_message``, allauth's adapter, audit's incident notices)."""

from __future__ import annotations

import re
from html import escape
from urllib.parse import urlsplit

_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)]")

_LAYOUT = """<!DOCTYPE html>
<html lang="en-AU">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{subject}</title></head>
<body style="margin:0;padding:0;background:#f6f5f1;color:#1d232b;line-height:1.5;
 font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0" style="background:#f6f5f1">
<tr><td align="center" style="padding:24px 12px">
<table role="presentation" width="100%" cellpadding="0" cellspacing="0"
 style="max-width:560px;background:#ffffff;border:1px solid #dcd9d0;border-radius:10px">
<tr><td style="padding:18px 24px;border-bottom:3px solid #f2b400">
<span style="display:inline-block;width:14px;height:14px;border-radius:7px;background:#f2b400;
 vertical-align:middle"></span>
<strong style="font-size:18px;vertical-align:middle;color:#1d232b">&nbsp;{name}</strong></td></tr>
<tr><td style="padding:8px 24px 16px;font-size:15px">
{paragraphs}
</td></tr>
<tr><td style="padding:14px 24px;border-top:1px solid #dcd9d0;color:#4a5563;font-size:13px">
{name} · Hosted in Sydney, Australia · <a href="{url}" style="color:#1f5f8b">{domain}</a></td></tr>
</table>
</td></tr>
</table>
</body>
</html>
"""


def domain(url: str) -> str:
    """The host (and port) of the public address: what emails call the site's domain."""
    return urlsplit(url).netloc


def _paragraph(text: str) -> str:
    parts, last = [], 0
    for match in _URL.finditer(text):
        parts.append(escape(text[last:match.start()], quote=False))
        url = escape(match.group(0))
        parts.append(f'<a href="{url}" style="color:#1f5f8b;word-break:break-all">{url}</a>')
        last = match.end()
    parts.append(escape(text[last:], quote=False))
    return "".join(parts).replace("\n", "<br>\n")


def branded_html(text: str, *, subject: str, site_name: str, site_url: str) -> str:
    """The HTML part for a plain-text body."""
    paragraphs = [_paragraph(p.strip("\n")) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return _LAYOUT.format(
        subject=escape(subject), name=escape(site_name), url=escape(site_url), domain=escape(domain(site_url)),
        paragraphs="\n".join(f'<p style="margin:14px 0">{p}</p>' for p in paragraphs),
    )
