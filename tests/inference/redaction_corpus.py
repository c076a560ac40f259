"""A labelled corpus for redaction (R-RED-3): valid Australian identifiers in contact-centre sentences, and
lookalikes (order numbers, dates, invoice numbers, numbers of an identifier's shape whose checksum fails).

Generated from a fixed seed, so every run sees the same corpus. Valid identifiers are made with their check digits
(COMPLIANCE.md's rules) and checked against ``python-stdnum`` where it has a validator; lookalikes are kept only if
every checksum of their shape fails. ``VALID`` items are ``(type, value, sentence)``; ``LOOKALIKES`` items
``(value, sentence)``. Also used by ``bench`` (P8) and the presidio comparison in ``docs/redaction.md``.
"""

from __future__ import annotations

import random

import phonenumbers
from stdnum import luhn
from stdnum.au import abn, acn, tfn

from core import redaction

_SEED = 20261204
PER_TYPE = 60


def _digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def _group(value: str, sizes: tuple[int, ...], sep: str = " ") -> str:
    out, at = [], 0
    for size in sizes:
        out.append(value[at:at + size])
        at += size
    return sep.join(part for part in out if part)


def make_tfn(rng: random.Random) -> str:
    while True:
        body = _digits(rng, 8)
        total = sum(int(d) * w for d, w in zip(body, (1, 4, 3, 7, 5, 8, 6, 9), strict=True)) % 11
        # weight 10 on the last digit: 10·c ≡ -total (mod 11) ⇔ c ≡ total
        if total < 10 and tfn.is_valid(body + str(total)):
            return body + str(total)


def make_abn(rng: random.Random) -> str:
    while True:
        rest = str(rng.randint(1, 9)) + _digits(rng, 8)
        value = abn.calc_check_digits(rest) + rest
        if abn.is_valid(value):
            return value


def make_acn(rng: random.Random) -> str:
    body = _digits(rng, 8)
    return body + acn.calc_check_digit(body)


def make_medicare(rng: random.Random) -> str:
    first = str(rng.randint(2, 6))
    body = first + _digits(rng, 7)
    check = sum(int(d) * w for d, w in zip(body, (1, 3, 7, 9, 1, 3, 7, 9), strict=True)) % 10
    return body + str(check) + str(rng.randint(1, 9))


def make_card(rng: random.Random) -> str:
    prefix, length = rng.choice([("4", 16), ("51", 16), ("55", 16), ("37", 15), ("2221", 16), ("4", 13), ("6011", 19)])
    body = prefix + _digits(rng, length - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def make_ihi(rng: random.Random) -> str:
    body = "800360" + _digits(rng, 9)
    return body + luhn.calc_check_digit(body)


def make_phone(rng: random.Random) -> str:
    while True:
        kind = rng.choice(["04", "02", "03", "07", "08", "1300", "1800", "13"])
        if kind == "13":
            value = "13" + _digits(rng, 4)
        elif kind in ("1300", "1800"):
            value = kind + _digits(rng, 6)
        else:
            value = kind + _digits(rng, 8)
        if phonenumbers.is_valid_number(phonenumbers.parse(value, "AU")):
            return value


_NAMES = ["jo.bloggs", "sam.nguyen", "priya_k", "m.oconnor", "liam.smith88", "aroha.t", "chen.wei", "k.papadopoulos"]
_DOMAINS = ["example.com.au", "bigpond.net.au", "gmail.com", "outlook.com", "health.nsw.gov.au", "unimelb.edu.au"]


def _format_number(rng: random.Random, kind: str, value: str) -> str:
    spaced = rng.random() < 0.6
    if kind == redaction.TFN:
        return _group(value, (3, 3, 3)) if spaced else value
    if kind == redaction.ABN:
        return _group(value, (2, 3, 3, 3)) if spaced else value
    if kind == redaction.ACN:
        return _group(value, (3, 3, 3)) if spaced else value
    if kind == redaction.MEDICARE:
        irn = rng.random() < 0.4
        core = value[:10]
        text = _group(core, (4, 5, 1)) if spaced else core
        return text + (str(rng.randint(1, 9)) if irn and not spaced else (f" {rng.randint(1, 9)}" if irn else ""))
    if kind in (redaction.CARD, redaction.IHI):
        return _group(value, (4, 4, 4, 4, 3)) if spaced else value
    if kind == redaction.PHONE:
        if value.startswith("04"):
            choice = rng.random()
            if choice < 0.3:
                return "+61 " + _group(value[1:], (3, 3, 3))
            return _group(value, (4, 3, 3)) if spaced else value
        if value.startswith("0"):
            return f"({value[:2]}) {_group(value[2:], (4, 4))}" if spaced else value
        if value.startswith(("1300", "1800")):
            return _group(value, (4, 3, 3)) if spaced else value
        return _group(value, (2, 2, 2))
    return value


_TEMPLATES = {
    redaction.TFN: ["Hi, my tax file number is {v}, can you update my records?",
                    "Customer read out TFN {v} for the payroll change.",
                    "{v} is my TFN, I think the ATO has it wrong."],
    redaction.ABN: ["Our ABN is {v} — please put it on the invoice.",
                    "Can you check supplier ABN {v} before we pay them?"],
    redaction.ACN: ["The company's ACN is {v}.", "ACN {v} was deregistered last year according to the caller."],
    redaction.MEDICARE: ["My Medicare number is {v} and I need a new card.",
                         "Caller gave Medicare card {v}, expiry 09/2027."],
    redaction.CARD: ["Please charge the card {v}, expiry 11/28.", "Customer wants a refund to {v}."],
    redaction.IHI: ["The patient's IHI is {v}.", "Healthcare identifier {v} needs to be linked."],
    redaction.EMAIL: ["You can email me at {v} with the quote.", "Send the confirmation to {v} please."],
    redaction.PHONE: ["Call me back on {v} after 3pm.", "My number is {v}, it's the best one to reach me.",
                      "The caller rang from {v} about the outage."],
    redaction.BSB: ["Pay it into BSB {v} account number {a}.", "BSB: {v}, acct {a}, name J Citizen."],
    redaction.PASSPORT: ["My passport number is {v} and it expires in June.", "Passport {v} was lost overseas."],
    redaction.LICENCE: ["Driver licence number {v}, issued in NSW.", "My drivers licence is {v}."],
}


def _build() -> tuple[list[tuple[str, str, str]], list[tuple[str, str]]]:
    rng = random.Random(_SEED)
    makers = {
        redaction.TFN: make_tfn, redaction.ABN: make_abn, redaction.ACN: make_acn,
        redaction.MEDICARE: make_medicare, redaction.CARD: make_card, redaction.IHI: make_ihi,
        redaction.PHONE: make_phone,
    }
    valid: list[tuple[str, str, str]] = [
        (redaction.ABN, "51 824 753 556", "Our ABN is 51 824 753 556."),
        (redaction.ACN, "004 085 616", "ACN 004 085 616 on the contract."),
        (redaction.MEDICARE, "2123 45670 1", "Medicare 2123 45670 1 please."),
        (redaction.TFN, "123 456 782", "TFN 123 456 782 for the form."),
    ]
    for kind, maker in makers.items():
        for _ in range(PER_TYPE):
            value = _format_number(rng, kind, maker(rng))
            valid.append((kind, value, rng.choice(_TEMPLATES[kind]).format(v=value)))
    for _ in range(PER_TYPE):
        value = f"{rng.choice(_NAMES)}{rng.randint(1, 99)}@{rng.choice(_DOMAINS)}"
        valid.append((redaction.EMAIL, value, rng.choice(_TEMPLATES[redaction.EMAIL]).format(v=value)))
        bsb = f"{_digits(rng, 3)}-{_digits(rng, 3)}"
        account = _digits(rng, rng.randint(6, 10))
        sentence = rng.choice(_TEMPLATES[redaction.BSB]).format(v=bsb, a=account)
        valid.append((redaction.BSB, bsb, sentence))
        valid.append((redaction.ACCOUNT, account, sentence))
        passport = rng.choice("ENPRM") + (rng.choice("ABCDE") if rng.random() < 0.5 else "") + _digits(rng, 7)
        valid.append((redaction.PASSPORT, passport, rng.choice(_TEMPLATES[redaction.PASSPORT]).format(v=passport)))
        licence = rng.choice(["", "", "S", "AB"]) + _digits(rng, rng.randint(6, 9))
        valid.append((redaction.LICENCE, licence, rng.choice(_TEMPLATES[redaction.LICENCE]).format(v=licence)))
    return valid, _lookalikes(rng)


def _fails_every_check(digits: str) -> bool:
    n = len(digits)
    medicare = n in (10, 11) and digits[0] in "23456" and sum(
        int(d) * w for d, w in zip(digits[:8], (1, 3, 7, 9, 1, 3, 7, 9), strict=True)) % 10 == int(digits[8])
    return not (
        tfn.is_valid(digits) or acn.is_valid(digits) or abn.is_valid(digits) or medicare
        or (13 <= n <= 19 and luhn.is_valid(digits))
        or (n == 8 and sum(int(d) * w for d, w in zip(digits, (10, 7, 8, 4, 6, 3, 5, 1), strict=True)) % 11 == 0)
    )


def _lookalikes(rng: random.Random) -> list[tuple[str, str]]:
    shapes = [
        ("Order number {v} hasn't arrived yet.", 9, (3, 3, 3)),
        ("Your reference is {v}.", 9, ()),
        ("Invoice {v} was paid on the 3rd.", 11, (2, 3, 3, 3)),
        ("Tracking number {v}, sent by Australia Post.", 10, ()),
        ("Member number {v} is on the back of the card.", 10, (4, 5, 1)),
        ("Card ending in the number {v} was declined.", 16, (4, 4, 4, 4)),
        ("The transaction id is {v}.", 16, ()),
        ("Ticket {v} was escalated to tier 2.", 8, ()),
        ("TFN-looking ref {v} from the old system.", 9, (3, 3, 3)),
        ("Serial {v} on the modem.", 13, ()),
    ]
    out: list[tuple[str, str]] = []
    while len(out) < PER_TYPE * 10:
        template, length, sizes = rng.choice(shapes)
        # Not a phone's shape: no leading 0, no 13/1300/1800 (a phone has no checksum to fail).
        digits = str(rng.randint(2, 9)) + _digits(rng, length - 1)
        if not _fails_every_check(digits):
            continue
        value = _group(digits, sizes) if sizes and rng.random() < 0.5 else digits
        out.append((value, template.format(v=value)))
    for _ in range(PER_TYPE * 2):
        day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(1950, 2030)
        date = rng.choice([f"{day:02d}/{month:02d}/{year}", f"{year}-{month:02d}-{day:02d}", f"{day}.{month}.{year}"])
        out.append((date, f"The customer was born on {date} and called on 12/03/2026."))
        invoice = f"INV-{_digits(rng, 7)}"
        out.append((invoice, f"Quote {invoice} for 3 items, total $1,234.56 inc GST."))
        amount = f"${rng.randint(1000, 999999):,}.{rng.randint(0, 99):02d}"
        out.append((amount, f"Balance owing is {amount} as at {day:02d}/{month:02d}/{year}."))
    return out


VALID, LOOKALIKES = _build()
