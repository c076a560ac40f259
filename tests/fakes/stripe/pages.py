"""The stand-in's hosted pages (Checkout, the customer portal, an invoice) as plain HTML forms, and invoice PDFs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from html import escape
from typing import Any

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem}"
    "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;text-align:left}"
    "button{font-size:1rem;padding:.5rem 1rem}.error{color:#a00}label{display:block;margin:.5rem 0}"
)


def money(amount_cents: int | Decimal | None, currency: str = "aud") -> str:
    value = Decimal(amount_cents or 0) / 100
    symbol = "A$" if currency == "aud" else currency.upper() + " "
    return f"{symbol}{value:,.2f}"


def _date(ts: int | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%d %b %Y") if ts else "—"


def _page(title: str, body: str) -> bytes:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body><p><small>Stripe stand-in (test mode)</small></p>"
        f"<h1>{escape(title)}</h1>{body}</body></html>"
    ).encode()


def _price_text(price: dict, quantity: int | None) -> str:
    recurring = price.get("recurring") or {}
    if recurring.get("usage_type") == "metered":
        unit = price.get("unit_amount_decimal")
        return f"usage-based{f', {unit}¢ per unit' if unit else ''}, billed monthly"
    return f"{money((price.get('unit_amount') or 0) * (quantity or 1), price['currency'])} per month"


def checkout_page(session: dict, lines: list[dict[str, Any]], extras: dict, error: str = "") -> bytes:
    rows = "".join(
        f"<tr><td>{escape(line['product']['name'])}"
        f"{' — ' + escape(line['price']['nickname']) if line['price'].get('nickname') else ''}</td>"
        f"<td>{escape(_price_text(line['price'], line['quantity']))}</td></tr>"
        for line in lines
    )
    trial_days = extras["trial_days"]
    no_card = trial_days and session["payment_method_collection"] == "if_required"
    button = "Start trial" if trial_days else "Pay and subscribe"
    notes = []
    if trial_days:
        notes.append(f"{trial_days}-day free trial" + (", no card needed." if no_card else "."))
    if session["automatic_tax"]["enabled"]:
        notes.append("GST is calculated from your billing address.")
    status = ""
    if session["status"] != "open":
        status = f"<p>This session is {escape(session['status'])}.</p>"
    fields = ""
    if session["status"] == "open":
        fields = (
            f'<form method="post" action="/checkout/{escape(session["id"])}">'
            '<label>Business name <input name="business_name" autocomplete="organization"></label>'
            + (
                '<label>ABN (optional) <input name="abn" inputmode="numeric"></label>'
                if session["tax_id_collection"]["enabled"]
                else ""
            )
            + '<label>Billing address <input name="line1" value="1 Test Street"></label>'
            '<label>City <input name="city" value="Sydney"></label>'
            '<label>State <input name="state" value="NSW"></label>'
            '<label>Postcode <input name="postal_code" value="2000"></label>'
            + ("" if no_card else '<label>Card <input name="card" value="4242 4242 4242 4242"></label>')
            + f'<p><button type="submit">{button}</button></p></form>'
        )
    cancel = f'<p><a href="{escape(session["cancel_url"] or "/")}">Cancel</a></p>' if session.get("cancel_url") else ""
    body = (
        (f'<p class="error" role="alert">{escape(error)}</p>' if error else "")
        + status
        + f"<table><tr><th>Item</th><th>Price</th></tr>{rows}</table>"
        + "".join(f"<p>{escape(n)}</p>" for n in notes)
        + fields
        + cancel
    )
    return _page("Subscribe", body)


def portal_page(session: dict, customer: dict, subscriptions: list[dict], invoices: list[dict]) -> bytes:
    parts = [f"<p>{escape(customer.get('name') or '')} {escape(customer.get('email') or '')}</p>"]
    for sub in subscriptions:
        item = sub["items"]["data"][0] if sub["items"]["data"] else {}
        end = item.get("current_period_end")
        if sub["cancel_at_period_end"]:
            state = f"Cancels on {_date(end)}."
            action = (
                f'<form method="post" action="/portal/{escape(session["id"])}/renew">'
                f'<input type="hidden" name="subscription" value="{escape(sub["id"])}">'
                '<button type="submit">Renew subscription</button></form>'
            )
        elif sub["status"] == "canceled":
            state, action = "Canceled.", ""
        else:
            state = f"{escape(sub['status'].replace('_', ' ').capitalize())}; renews on {_date(end)}."
            action = (
                f'<form method="post" action="/portal/{escape(session["id"])}/cancel">'
                f'<input type="hidden" name="subscription" value="{escape(sub["id"])}">'
                '<button type="submit">Cancel subscription</button></form>'
            )
        parts.append(f"<h2>Subscription</h2><p>{state}</p>{action}")
    parts.append(
        f'<form method="post" action="/portal/{escape(session["id"])}/card">'
        '<button type="submit">Update payment method</button></form>'
    )
    if invoices:
        rows = "".join(
            f'<tr><td><a href="/invoices/{escape(i["id"])}">{escape(i["number"] or i["id"])}</a></td>'
            f"<td>{_date(i['created'])}</td><td>{money(i['total'], i['currency'])}</td>"
            f"<td>{escape(i['status'])}</td></tr>"
            for i in invoices
        )
        parts.append(f"<h2>Invoices</h2><table>{rows}</table>")
    parts.append(f'<p><a href="{escape(session.get("return_url") or "/")}">Return</a></p>')
    return _page("Billing", "".join(parts))


def invoice_page(invoice: dict, lines: list[dict]) -> bytes:
    rows = "".join(
        f"<tr><td>{escape(line['description'] or '')}</td><td>{_date(line['period']['start'])} to "
        f"{_date(line['period']['end'])}</td><td>{money(line['amount'], line['currency'])}</td></tr>"
        for line in lines
    )
    tax = invoice["total"] - invoice["subtotal"]
    pay = ""
    if invoice["status"] == "open":
        pay = (
            f'<form method="post" action="/invoices/{escape(invoice["id"])}/pay">'
            f'<button type="submit">Pay {money(invoice["amount_due"], invoice["currency"])}</button></form>'
        )
    body = (
        f"<p>Invoice {escape(invoice['number'] or invoice['id'])}, {_date(invoice['created'])}: "
        f"{escape(invoice['status'])}</p>"
        f"<table><tr><th>Description</th><th>Period</th><th>Amount</th></tr>{rows}"
        f"<tr><td>Subtotal</td><td></td><td>{money(invoice['subtotal'], invoice['currency'])}</td></tr>"
        f"<tr><td>GST (10%)</td><td></td><td>{money(tax, invoice['currency'])}</td></tr>"
        f"<tr><th>Total</th><td></td><th>{money(invoice['total'], invoice['currency'])}</th></tr></table>"
        f'<p><a href="/invoices/{escape(invoice["id"])}/pdf">Download PDF</a></p>{pay}'
    )
    return _page("Tax invoice", body)


def _pdf_text(text: str) -> str:
    safe = text.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def invoice_pdf(invoice: dict, lines: list[dict]) -> bytes:
    """A one-page PDF (valid: header, objects, cross-reference table, trailer) that says what the invoice says."""
    text_lines = [
        "Tax invoice",
        f"{invoice['account_name']}",
        f"Invoice {invoice['number'] or invoice['id']}   Date {_date(invoice['created'])}   Status {invoice['status']}",
        f"Bill to: {invoice.get('customer_name') or ''} {invoice.get('customer_email') or ''}",
        *(f"ABN {t['value']}" for t in invoice.get("customer_tax_ids") or [] if t["type"] == "au_abn"),
        "",
        *(f"{line['description']}: {money(line['amount'], line['currency'])}" for line in lines),
        "",
        f"Subtotal {money(invoice['subtotal'], invoice['currency'])}",
        f"GST {money(invoice['total'] - invoice['subtotal'], invoice['currency'])}",
        f"Total {money(invoice['total'], invoice['currency'])}",
    ]
    stream = "BT /F1 11 Tf 50 790 Td 14 TL " + " ".join(f"({_pdf_text(t)}) '" for t in text_lines) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)
