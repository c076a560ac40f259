"""Australian personal-information redaction for prompts, and restoring the originals in replies.

Django-free and offline (no model, no suffix list, no network): the data plane runs it on `/v1` requests before
anything leaves the process. See ``docs/redaction.md``.

Detection is candidate-then-validate: cheap regular expressions find digit runs, e-mail addresses and
keyword-led identifiers; a candidate is replaced only when a validator accepts it. Checksums come from
``python-stdnum`` (TFN, ABN, ACN, Luhn) and AU phone numbers from ``phonenumbers``; Medicare and IHI have no
validator there, so their rules (COMPLIANCE.md's table) are here. Identifiers without a check digit (BSB and
account, passport, driver licence, a legacy 8-digit TFN) need a context word nearby, else an order number would be
taken for one.

A ``Redactor`` lives for one request: the same value gets the same placeholder (``[AU_TFN_1]``) wherever it occurs,
and it holds the mapping that ``restore`` and ``StreamRestorer`` use to put the originals back into the reply. It is
never logged or stored; only ``counts`` (replacements per type) leave it.
"""

from __future__ import annotations

import re

import phonenumbers
from stdnum import luhn
from stdnum.au import abn as _abn
from stdnum.au import acn as _acn
from stdnum.au import tfn as _tfn

OFF, REDACT, RESTORE = "off", "redact", "restore"
MODES = (OFF, REDACT, RESTORE)

TFN, MEDICARE, ABN, ACN, CARD, IHI = "AU_TFN", "AU_MEDICARE", "AU_ABN", "AU_ACN", "AU_CARD", "AU_IHI"
EMAIL, PHONE, BSB, ACCOUNT = "AU_EMAIL", "AU_PHONE", "AU_BSB", "AU_BANK_ACCOUNT"
PASSPORT, LICENCE = "AU_PASSPORT", "AU_DRIVER_LICENCE"
TYPES = (TFN, MEDICARE, ABN, ACN, CARD, IHI, EMAIL, PHONE, BSB, ACCOUNT, PASSPORT, LICENCE)


def effective_mode(tenant_mode: str, header: bool) -> str:
    """The mode for one request: the tenant's, raised to at least ``redact`` when the request asked for it (a
    request may always ask for more privacy, never for less)."""
    if header and tenant_mode not in (REDACT, RESTORE):
        return REDACT
    return tenant_mode if tenant_mode in MODES else OFF


# --- candidates ------------------------------------------------------------------------------------
# A run of digits with spaces or hyphens between groups, optionally led by +61 or a bracketed area code. Text
# copied from a web page or a PDF separates groups with non-breaking spaces, speech-to-text and hand typing with
# two spaces or a spaced dash ("123 - 456 - 782"), word processors with an en dash: up to three such characters
# between digits. A bounded class (not an alternation) keeps the pattern linear and as fast as single separators.
_SEP = "[ \u00a0\u2007\u202f\\-\u2010\u2011\u2013]"
_RUN = re.compile(rf"(?<![\w+\-./])(?:\+61{_SEP}{{0,3}}(?:\(0\){_SEP}{{0,3}})?|\(0\d\){_SEP}{{0,3}})?"
                  rf"\d(?:{_SEP}{{0,3}}\d)*(?![\w]|[.\-\u2010\u2011\u2013]\d)")
# What splits a run that is no identifier as a whole into parts that may each be one ("ref 123456 - 0412 345 678"):
# a separator wider than one character.
_WIDE_SEP = re.compile(f"{_SEP}{{2,3}}")
_EMAIL = re.compile(r"(?<![\w.%+\-])[A-Za-z0-9][\w.%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.)+[A-Za-z]{2,24}"
                    r"(?![\w\-])")
_TFN_CONTEXT = re.compile(r"(?i)\b(?:tfn|tax\s*file)")
_BSB = re.compile(r"(?i)\bbsb\b\D{0,20}?(\d{3}[ \-]?\d{3})(?!\d)")
_ACCOUNT = re.compile(
    r"(?i)\b(?:acc(?:oun)?t|a/c)\b(?:\s*(?:number|num|no\.?|#))?\D{0,12}?(\d(?:[ \-]?\d){5,9})(?![\d])"
)
# Up to three filler words between the context word and the value: "passport number is N1234567".
_FILLER = r"(?:[^\w\n]{0,3}(?:number|num|no|is|was|of|id|card|the)\b){0,3}[^\w\n]{0,4}"
_PASSPORT = re.compile(r"(?i)\bpassport\b" + _FILLER + r"\b([A-Za-z]{1,2}\d{7})\b")
_LICENCE = re.compile(
    r"(?i)\b(?:driver'?s?\s*licen[cs]e|licen[cs]e)\b" + _FILLER
    + r"\b((?=[A-Za-z0-9]*\d{4})[A-Za-z]{0,2}\d{4,10}[A-Za-z]?)\b"
)
_CONTEXT_WINDOW = 40
_PLACEHOLDER = re.compile(r"\[AU_[A-Z_]+_\d+\]")
_PLACEHOLDER_BYTES = re.compile(rb"\[AU_[A-Z_]+_\d+\]")
_PARTIAL_TAIL = re.compile(r"\[(?:A(?:U(?:_[A-Z_]*\d*)?)?)?$")


# --- validators ------------------------------------------------------------------------------------
# The candidates are clean digit strings of the right length already, so python-stdnum's checksum functions are
# called directly: its ``is_valid`` first normalises the text character by character, which cost more than the
# rest of the detection together.
def _tfn_valid(digits: str) -> bool:
    return _tfn.checksum(digits) == 0


def _acn_valid(digits: str) -> bool:
    return _acn.calc_check_digit(digits[:8]) == digits[8]


def _abn_valid(digits: str) -> bool:
    return _abn.calc_check_digits(digits[2:]) == digits[:2]


def _luhn_valid(digits: str) -> bool:
    return luhn.checksum(digits) == 0


def _medicare(digits: str) -> bool:
    """10 digits, first 2-6; digits 1-8 weighted 1,3,7,9,1,3,7,9, sum mod 10 is digit 9 (10th: issue number)."""
    if len(digits) != 10 or digits[0] not in "23456":
        return False
    total = sum(int(d) * w for d, w in zip(digits[:8], (1, 3, 7, 9, 1, 3, 7, 9), strict=True))
    return total % 10 == int(digits[8])


def _ihi(digits: str) -> bool:
    return len(digits) == 16 and digits.startswith("800360") and _luhn_valid(digits)


def _legacy_tfn(digits: str) -> bool:
    total = sum(int(d) * w for d, w in zip(digits, (10, 7, 8, 4, 6, 3, 5, 1), strict=True))
    return total % 11 == 0


# phonenumbers' patterns for the regions that share +61 and the 0 trunk prefix (Australia, and Christmas Island and
# the Cocos Islands, whose numbers are in AU's 08 ranges): a number is valid in a region when it matches the
# region's general pattern and one of its number types' patterns, which is what ``is_valid_number`` checks after
# parsing. Joined into one pattern compiled once (a lookahead for each region's general pattern), so a text of
# phone lookalikes costs one match per candidate and no parse.
def _region_pattern(region: str) -> str:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    kinds = (metadata.fixed_line, metadata.mobile, metadata.toll_free, metadata.premium_rate, metadata.shared_cost,
             metadata.voip, metadata.personal_number, metadata.uan, metadata.pager, metadata.voicemail)
    types = "|".join(f"(?:{d.national_number_pattern})" for d in kinds if d is not None and d.national_number_pattern)
    return f"(?=(?:{metadata.general_desc.national_number_pattern})\\Z)(?:{types})"


_PLUS_61_NUMBER = re.compile("|".join(_region_pattern(r) for r in phonenumbers.region_codes_for_country_code(61)))


def _phone(text: str, digits: str) -> bool:
    """An AU number as phonenumbers knows them: mobiles, geographic, 13, 1300 and 1800 numbers."""
    if text.startswith("+"):
        if not digits.startswith("61") or len(digits) != 11:
            return False
        national = "0" + digits[2:]
    else:
        national = digits
    if national.startswith("0"):
        if len(national) != 10 or (national[1] not in "2378" and national[1] != "4"):
            return False
    elif national.startswith("13"):
        # 13 numbers are six digits, 1300 ten; a six-digit run without the 13 xx xx grouping is more often an
        # order number: those need the grouping.
        if len(national) == 6:
            if not re.fullmatch(r"13[ \-]?\d\d[ \-]?\d\d", text):
                return False
        elif not (len(national) == 10 and national.startswith("1300")):
            return False
    elif not (national.startswith("1800") and len(national) == 10):
        return False
    nsn = national[1:] if national.startswith("0") else national
    return _PLUS_61_NUMBER.fullmatch(nsn) is not None


def _classify(text: str, digits: str, before: str) -> str | None:
    """The type of a digit run (``text`` as written, ``digits`` its digits), or None."""
    n = len(digits)
    if text.startswith(("+", "(")) or (digits[0] == "0" and n == 10) or digits.startswith(("13", "1800")):
        if _phone(text if not text.startswith("(") else text.replace("(", "").replace(")", ""), digits):
            return PHONE
        if text.startswith("+"):
            return None
    if n == 9:
        if _tfn_valid(digits):
            return ACN if _acn_valid(digits) and re.search(r"(?i)\b(?:acn|company)\b", before) else TFN
        if _acn_valid(digits):
            return ACN
        return None
    if n == 8:
        return TFN if _legacy_tfn(digits) and _TFN_CONTEXT.search(before) else None
    if n == 11:
        if _abn_valid(digits):
            return ABN
        if _medicare(digits[:10]) and digits[10] != "0":
            return MEDICARE
    if n == 10 and _medicare(digits):
        return MEDICARE
    if n == 16 and _ihi(digits):
        return IHI
    if 13 <= n <= 19 and _luhn_valid(digits):
        return CARD
    return None


# --- the per-request redactor ----------------------------------------------------------------------
class Redactor:
    """Redacts the texts of one request; holds their placeholders for restoring the reply."""

    __slots__ = ("_by_value", "_numbers", "_originals", "counts")

    def __init__(self, *, numbered: dict[str, int] | None = None) -> None:
        """``numbered``: placeholders already given per type by earlier requests whose redacted text this one
        continues (a conversation's earlier turns), so a new value never reuses one of their placeholders."""
        self._by_value: dict[tuple[str, str], str] = {}  # (type, normalised value) -> placeholder
        self._originals: dict[str, str] = {}  # placeholder -> the value as first written
        self._numbers: dict[str, int] = dict(numbered or {})  # type -> placeholders given
        self.counts: dict[str, int] = {}  # replacements per type

    def __bool__(self) -> bool:
        return bool(self._originals)

    @property
    def numbered(self) -> dict[str, int]:
        """Placeholders given per type so far (counts only, never a value)."""
        return dict(self._numbers)

    def _placeholder(self, kind: str, value: str) -> str:
        normal = value.lower() if kind == EMAIL else re.sub(r"\W", "", value).upper()
        if kind == PHONE and normal.startswith("61") and len(normal) == 11:
            normal = "0" + normal[2:]  # +61 4xx and 04xx: the same number, the same placeholder
        placeholder = self._by_value.get((kind, normal))
        if placeholder is None:
            number = self._numbers.get(kind, 0) + 1
            self._numbers[kind] = number
            placeholder = f"[{kind}_{number}]"
            self._by_value[(kind, normal)] = placeholder
            self._originals[placeholder] = value
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return placeholder

    def redact(self, text: str) -> str:
        """``text`` with every identifier found replaced by its placeholder (the same object if none)."""
        spans = find(text)
        if not spans:
            return text
        out = []
        last = 0
        for start, end, kind in spans:
            out.append(text[last:start])
            out.append(self._placeholder(kind, text[start:end]))
            last = end
        out.append(text[last:])
        return "".join(out)

    # --- restoring ---
    def restore(self, text: str) -> str:
        if not self._originals or "[AU_" not in text:
            return text
        return _PLACEHOLDER.sub(lambda m: self._originals.get(m.group(0), m.group(0)), text)

    def restore_json(self, body: bytes) -> bytes:
        """A JSON document with the placeholders in its strings replaced by the originals (JSON-escaped)."""
        if not self._originals or b"[AU_" not in body:
            return body

        def put_back(match: re.Match) -> bytes:
            original = self._originals.get(match.group(0).decode())
            if original is None:
                return match.group(0)
            escaped = original.replace("\\", "\\\\").replace('"', '\\"')
            return escaped.encode()

        return _PLACEHOLDER_BYTES.sub(put_back, body)

    def stream_restorer(self) -> StreamRestorer:
        return StreamRestorer(self)


class StreamRestorer:
    """Restores a streamed reply piece by piece, per choice. A piece that ends in what may be the start of a
    placeholder (``[AU_TF``) keeps that tail back until the next piece completes or refutes it."""

    __slots__ = ("_redactor", "_tails")

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor
        self._tails: dict[object, str] = {}

    def feed(self, key: object, text: str) -> str:
        tail = self._tails.pop(key, "")
        if tail:
            text = tail + text
        cut = text.rfind("[")
        if cut != -1 and "]" not in text[cut:] and len(text) - cut <= 40 and _PARTIAL_TAIL.search(text, cut):
            self._tails[key] = text[cut:]
            text = text[:cut]
        return self._redactor.restore(text)

    def flush(self, key: object) -> str:
        """What is held back for ``key`` (its choice ended)."""
        return self._redactor.restore(self._tails.pop(key, ""))

    def pending(self) -> list:
        return list(self._tails)


# --- detection -------------------------------------------------------------------------------------
_NON_DIGIT = re.compile(r"\D")


def _digits(text: str) -> str:
    """The decimal digits of ``text`` as ASCII. ``\\d`` matches every script's digits (full-width, Arabic-Indic,
    Devanagari), which a multilingual chat writes and the model reads as numbers; the validators know only 0-9
    (stdnum's Luhn raised on anything else)."""
    digits = _NON_DIGIT.sub("", text)
    return digits if digits.isascii() else "".join(str(int(c)) for c in digits)


_LOCAL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.%+-")


def _emails(text: str) -> list[tuple[int, int, str]]:
    """E-mail spans, looked for only around each "@" (a pattern tried at every position costs more)."""
    spans = []
    at = text.find("@")
    while at != -1:
        start = at
        while start > 0 and at - start < 64 and text[start - 1] in _LOCAL_CHARS:
            start -= 1
        m = _EMAIL.match(text, start)
        if m is not None:
            spans.append((m.start(), m.end(), EMAIL))
        at = text.find("@", at + 1)
    return spans


def _has(lowered: str | None, text: str, word: str, start: int = 0, end: int | None = None) -> bool:
    if lowered is None:
        return re.search(re.escape(word), text[max(0, start):end], re.IGNORECASE) is not None
    return lowered.find(word, max(0, start), end if end is not None else len(lowered)) != -1


def _keyed(text: str, lowered: str | None, words: tuple[str, ...], pattern: re.Pattern, kind: str
           ) -> list[tuple[int, int, str]]:
    """Spans of ``pattern``'s value group, tried only where one of its context ``words`` starts."""
    if lowered is None:
        return [(m.start(1), m.end(1), kind) for m in pattern.finditer(text)]
    spans = []
    for word in words:
        at = lowered.find(word)
        while at != -1:
            m = pattern.match(text, at)
            if m is not None:
                spans.append((m.start(1), m.end(1), kind))
            at = lowered.find(word, at + 1)
    return spans
def _as_dialled(raw: str, digits: str) -> tuple[str, str]:
    """A run's text and digits with an international form reduced to ``+61`` and its national digits: the trunk
    zero in "+61 (0) 412 ..." is not dialled, and "0061 ..." is +61 dialled from Australia."""
    if raw[0] == "+" and "(0)" in raw:
        return raw, _NON_DIGIT.sub("", raw.replace("(0)", ""))
    if len(digits) == 13 and digits.startswith("0061"):
        return "+" + raw[2:], digits[2:]
    return raw, digits


def _parts(text: str, start: int, raw: str) -> list[tuple[int, int, str]]:
    """The identifiers among a run's parts split at its wide separators (a whole run that is none)."""
    spans = []
    at = 0
    for sep in (*_WIDE_SEP.finditer(raw), None):
        end = sep.start() if sep is not None else len(raw)
        part = raw[at:end]
        digits = _digits(part)
        if len(digits) >= 6:
            begin = start + at
            kind = _classify(*_as_dialled(part, digits), text[max(0, begin - _CONTEXT_WINDOW):begin])
            if kind is not None:
                spans.append((begin, start + end, kind))
        if sep is not None:
            at = sep.end()
    return spans


def find(text: str) -> list[tuple[int, int, str]]:
    """Non-overlapping ``(start, end, type)`` spans of the identifiers in ``text``, in order."""
    # Any script's digits, as the candidates' ``\d`` (a short text is scanned for ASCII first, the common case).
    has_digit = (any(c in text for c in "0123456789") or (not text.isascii() and re.search(r"\d", text) is not None)
                 if len(text) < 64 else re.search(r"\d", text) is not None)
    if not has_digit and "@" not in text:
        return []
    spans: list[tuple[int, int, str]] = []
    if "@" in text:
        spans += _emails(text)
    if not has_digit:
        return spans
    lowered = text.lower()
    if len(lowered) != len(text):  # a character whose lower case is longer: offsets would shift
        lowered = text.casefold() if len(text.casefold()) == len(text) else None
    if _has(lowered, text, "bsb"):
        spans += _keyed(text, lowered, ("bsb",), _BSB, BSB)
        spans += _keyed(text, lowered, ("acc", "a/c"), _ACCOUNT, ACCOUNT)
    elif _has(lowered, text, "bank"):
        spans += [span for span in _keyed(text, lowered, ("acc", "a/c"), _ACCOUNT, ACCOUNT)
                  if _has(lowered, text, "bank", span[0] - 60, span[1] + 60)]
    if _has(lowered, text, "passport"):
        spans += _keyed(text, lowered, ("passport",), _PASSPORT, PASSPORT)
    if _has(lowered, text, "licen"):
        spans += _keyed(text, lowered, ("licen", "driver"), _LICENCE, LICENCE)
    keyed = sorted(spans)  # keyword-led and e-mail spans win over a digit run they overlap
    k = 0
    for m in _RUN.finditer(text):
        start, end = m.span()
        while k < len(keyed) and keyed[k][1] <= start:
            k += 1
        if k < len(keyed) and keyed[k][0] < end:
            continue
        raw = m.group(0)
        digits = _digits(raw)
        if len(digits) < 6:
            continue
        before = text[max(0, start - _CONTEXT_WINDOW):start]
        kind = _classify(*_as_dialled(raw, digits), before)
        if kind is not None:
            spans.append((start, end, kind))
        elif _WIDE_SEP.search(raw) is not None:
            spans += _parts(text, start, raw)
    spans.sort()
    result: list[tuple[int, int, str]] = []
    last_end = -1
    for span in spans:
        if span[0] >= last_end:
            result.append(span)
            last_end = span[1]
    return result
