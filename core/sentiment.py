"""Customer sentiment and the escalation decision, for the conversation API and the playground's customer mode.

Django-free (``core``): both planes may use it, and nothing here does I/O except through what a caller hands in.

- ``Sentiment``: a score in [-1, 1] and its label (negative, neutral, positive).
- ``LexiconScorer``: our own lexicon and rules, tuned for contact-centre English (negation, intensifiers, "but",
  exclamation, capitals, and the idiom customers use: "not happy", "ripped off", "on hold", "third time",
  "cheers", "no worries", "top job"). Pure Python, about 20 µs a turn. Chosen over VADER by measurement on a
  labelled set of contact-centre turns (tests/core/data/, numbers in docs/conversations.md): VADER, tuned for
  social media, reads the polite neutral requests of a contact centre ("please", "sure", "fine") as positive and
  misses its complaints ("third time", "on hold for an hour", "charged twice").
- ``AnchorScorer``: the tenant's embedding model (through whatever ``embed`` the caller gives: the data plane
  sends it through the same dispatch as `/v1/embeddings`) scores a turn by cosine similarity to positive and
  negative exemplars embedded in the same call (never cached across callers: each pays only for its own turn);
  when the embedding call fails it falls back to the lexicon and says why.
- ``EscalationRule`` and ``decide``: the tenant's rule (threshold, consecutive negative turns, trigger phrases) and
  the decision for one customer turn. ``rule_digest``/``text_digest`` are what the audit chain records of a
  decision's inputs (never the text).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import orjson

from core import ccaas

NEGATIVE, NEUTRAL, POSITIVE = "negative", "neutral", "positive"
LABELS = (NEGATIVE, NEUTRAL, POSITIVE)
# |score| below this is neutral. Chosen on the labelled set: polite requests carry small weights ("cancel",
# "problem") that must not make them negative.
NEUTRAL_BAND = 0.3
MAX_TEXT_CHARS = 8_000  # a scorer reads at most this much of a turn (the conversation API bounds turns anyway)


@dataclass(frozen=True, slots=True)
class Sentiment:
    score: float  # in [-1, 1]
    label: str  # "negative" | "neutral" | "positive"

    def as_dict(self) -> dict:
        return {"score": self.score, "label": self.label}


def sentiment_of(score: float) -> Sentiment:
    """The ``Sentiment`` of a score (clamped to [-1, 1], rounded to 4 places)."""
    score = round(max(-1.0, min(1.0, score)), 4)
    label = NEGATIVE if score <= -NEUTRAL_BAND else POSITIVE if score >= NEUTRAL_BAND else NEUTRAL
    return Sentiment(score, label)


@dataclass(frozen=True, slots=True)
class Scored:
    """A scorer's answer: the sentiment, the scorer that produced it, and why it fell back, if it did."""

    sentiment: Sentiment
    scorer: str
    fallback: str = ""  # "" or the reason the configured scorer wasn't used (e.g. "embedding_failed: 503")


class Scorer(Protocol):
    name: str

    async def score(self, text: str) -> Scored:
        """The sentiment of one customer turn."""


# --- the lexicon -------------------------------------------------------------------------------------
# Valences on VADER's scale (-4 .. 4). Words a contact centre hears in complaints carry weight even where they are
# not emotional in general English ("again", "still", "waiting", "overcharged"); words VADER scores but which are
# politeness or routine here carry none ("please", "sure", "fine", "like", "help" is small).
_WORDS: dict[str, float] = {
    # positive
    "thanks": 1.9, "thank": 1.9, "thankyou": 1.9, "ta": 1.2, "cheers": 1.9, "appreciate": 2.0,
    "appreciated": 2.0, "great": 2.2, "brilliant": 2.6, "perfect": 2.4, "perfectly": 2.0, "awesome": 2.6,
    "lovely": 2.2, "excellent": 2.7, "fantastic": 2.7, "wonderful": 2.7, "amazing": 2.7, "legend": 2.5,
    "champion": 2.5, "star": 1.8, "happy": 2.0, "pleased": 2.0, "glad": 2.0, "relieved": 1.8, "relief": 1.6,
    "helpful": 2.0, "help": 0.8, "helped": 1.2, "sorted": 1.5, "fixed": 1.3, "resolved": 1.5, "working": 0.8,
    "kind": 1.6, "patient": 1.4, "patience": 1.4, "easy": 1.3, "easier": 1.5, "quick": 1.1, "quickly": 1.1,
    "fast": 1.0, "impressed": 2.0, "professional": 1.6, "recommend": 1.8, "love": 2.6, "good": 1.9, "nice": 1.8,
    "beautiful": 2.2, "stoked": 2.6, "satisfied": 1.8, "wow": 1.0, "restored": 1.2, "early": 0.8, "deal": 0.6,
    "clearly": 0.8, "understanding": 1.4, "better": 1.5, "best": 2.4, "enjoy": 2.0, "grateful": 2.4,
    "rapt": 2.5, "ripper": 2.5, "bonza": 2.5, "superb": 2.8, "outstanding": 2.8, "friendly": 1.8,
    "fair": 1.2,
    # negative
    "bad": -1.8, "terrible": -2.8, "awful": -2.8, "horrible": -2.8, "worst": -3.1, "useless": -2.4, "hopeless": -2.5,
    "pathetic": -2.8, "disgrace": -3.0, "disgraceful": -3.0, "joke": -1.8, "ridiculous": -2.2,
    "unacceptable": -2.6, "rude": -2.2, "furious": -3.0, "angry": -2.6, "annoyed": -2.0, "annoying": -2.0,
    "frustrated": -2.2, "frustrating": -2.2, "upset": -2.2, "unhappy": -2.4, "disappointed": -2.2,
    "disappointing": -2.2, "scam": -2.8, "shambles": -2.6, "rubbish": -2.2, "nightmare": -2.6, "waste": -2.0,
    "wrong": -1.5, "broken": -1.8, "faulty": -2.0, "damaged": -1.6, "missing": -1.2, "late": -1.4,
    "overcharged": -2.2, "lied": -2.2, "lying": -2.2, "liar": -2.6, "sneaky": -2.0, "stressed": -2.0,
    "stress": -1.8, "worried": -1.5, "worry": -1.2, "ruined": -2.5, "mad": -2.0, "cancel": -1.0,
    "complaint": -1.8, "complain": -1.8, "ombudsman": -2.0, "disconnected": -1.5, "crashing": -1.6,
    "crashed": -1.6, "crashes": -1.6, "declined": -1.0, "twice": -1.0, "again": -0.6, "still": -0.5,
    "forever": -1.0, "problem": -0.8, "problems": -0.8, "issue": -0.5, "hard": -1.0, "losing": -1.2,
    "excuses": -1.5, "promised": -0.5, "nobody": -1.0, "awfully": -1.5, "seriously": -1.2, "stuffed": -1.8,
    "dodgy": -2.2, "shocking": -2.6, "appalling": -2.9, "incompetent": -2.8, "fault": -1.2, "hate": -2.7,
    "sick": -1.5, "tired": -1.2, "chasing": -1.4, "bothered": -1.0, "confused": -1.0, "failed": -1.6,
    "error": -1.0, "unfair": -2.0, "ignored": -2.0, "threatening": -2.0, "legal": -1.0, "lawyer": -1.6,
}
# Multi-word idiom, matched before the words (regular expressions on the lower-cased text; the longest wins).
_PHRASES: dict[str, float] = {
    r"not happy": -2.5, r"rip(?:ped)?[- ](?:\w+ )?off": -2.8, r"rip-?offs?": -2.8, r"on hold": -1.2,
    r"(?:third|fourth|fifth|sixth|tenth|umpteenth) time": -1.5,
    r"(?:two|three|four|five|six|ten|several|many|multiple|\d+) times": -1.5,
    r"(?:been|keep|kept|still) waiting": -1.5, r"charged (?:me )?twice": -2.0, r"double charged": -2.0,
    r"fed up": -2.5, r"over it": -2.0, r"let down": -2.0, r"had enough": -2.5, r"last straw": -2.5,
    r"sick (?:and tired )?of": -2.2, r"stuffed (?:\w+ )?up": -2.2, r"stopped working": -2.0,
    r"not working": -1.5, r"never (?:showed|turned|shows|turns) up": -2.0, r"nobody cares": -2.2,
    r"still nothing": -1.5,
    r"(?:never|nobody|no one) (?:\w+ ){0,2}(?:calls?|rang|rings?) (?:me )?back": -2.0, r"nothing,? nothing": -1.0,
    r"are you (?:even )?listening": -1.5,
    r"driving me (?:mad|crazy|nuts|insane|up the wall)": -2.5, r"can'?t believe": -1.5, r"you people": -1.0,
    r"you lot": -0.8, r"money back": -1.0, r"short[- ]changed": -2.0, r"cut (?:\w+ )?off": -1.5,
    r"without (?:any )?warning": -1.5, r"every time": -1.0, r"different answer": -1.0, r"no one": -1.0,
    r"(?:a |the )?straight answer": -0.8, r"expected (?:much )?better": -1.0, r"passed (?:around|from)": -1.0,
    r"how hard can it be": -2.0, r"up the creek": -2.0, r"not good enough": -2.0, r"not fair": -1.8,
    r"what a joke": -2.5, r"get stuffed": -3.0, r"bloody hell": -2.0, r"piss(?:ed)? off": -2.5,
    # positive
    r"no worries": 1.5, r"no problems?": 1.2, r"no dramas": 1.5, r"all good": 1.5, r"spot on": 2.0,
    r"top job": 2.2, r"good on (?:you|ya)": 2.0, r"good as gold": 2.0, r"happy days": 2.0, r"nice one": 2.0,
    r"good stuff": 2.0, r"(?:works?|working) a treat": 2.2, r"made my day": 2.6, r"above and beyond": 2.5,
    r"much appreciated": 2.4, r"too easy": 1.8, r"thanks (?:a )?heaps": 2.2, r"thanks a (?:lot|million|bunch)": 2.2,
    r"you'?re a (?:star|legend|champ)": 2.6, r"well done": 2.0, r"sweet as": 1.8,
}
_NEGATORS = frozenset({
    "not", "no", "never", "nothing", "nobody", "none", "neither", "nor", "cannot", "without", "hardly", "barely",
    "isnt", "wasnt", "arent", "werent", "dont", "doesnt", "didnt", "cant", "couldnt", "wont", "wouldnt",
    "shouldnt", "havent", "hasnt", "hadnt", "aint",
})
_NEGATION_SCALAR = -0.74  # VADER's: a negated word keeps some of its strength, reversed
_NEGATION_WINDOW = 3  # words before a sentiment word that can negate it
_BOOSTERS: dict[str, float] = {
    "very": 0.293, "really": 0.293, "so": 0.293, "absolutely": 0.293, "completely": 0.293, "totally": 0.293,
    "extremely": 0.293, "incredibly": 0.293, "bloody": 0.293, "super": 0.293, "utterly": 0.293, "truly": 0.293,
    "such": 0.293, "too": 0.2, "most": 0.293, "much": 0.2, "heaps": 0.293, "absolute": 0.293, "total": 0.293,
    "highly": 0.293, "seriously": 0.2, "damn": 0.293, "fully": 0.2,
    "slightly": -0.293, "somewhat": -0.293, "bit": -0.293, "little": -0.293, "kinda": -0.293, "barely": -0.293,
}
_ALPHA = 15.0  # normalisation: x / sqrt(x² + alpha), as VADER's compound score
_WORD = re.compile(r"[a-z0-9']+|[A-Z0-9']+|!", re.IGNORECASE)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})  # typographic apostrophes
_PHRASE_PATTERNS = sorted(_PHRASES, key=len, reverse=True)
_PHRASE_RE = re.compile(r"(?<![\w'])(?:" + "|".join(f"(?:{p})" for p in _PHRASE_PATTERNS) + r")(?![\w'])")
_PHRASE_LOOKUP = [(re.compile(p), v) for p, v in _PHRASES.items()]


@lru_cache(maxsize=512)
def _phrase_valence(matched: str) -> float:
    for pattern, value in _PHRASE_LOOKUP:
        if pattern.fullmatch(matched):
            return value
    return 0.0  # unreachable: every match is one of the patterns


class LexiconScorer:
    """The default scorer: deterministic, no I/O. ``sentiment`` is the synchronous call."""

    name = "lexicon"

    def sentiment(self, text: str) -> Sentiment:
        return sentiment_of(self.raw(text))

    async def score(self, text: str) -> Scored:
        return Scored(self.sentiment(text), self.name)

    def raw(self, text: str) -> float:
        """The normalised score before clamping and labelling."""
        text = text[:MAX_TEXT_CHARS].translate(_APOSTROPHES)
        lower = text.lower()
        # Idiom first: each phrase becomes one token with its valence, so its words aren't scored again.
        valences: list[tuple[str, float | None]] = []  # (token, valence or None for a non-sentiment word)
        shouting = _mostly_lowercase(text)
        position = 0
        for match in _PHRASE_RE.finditer(lower):
            valences += _tokens(text[position:match.start()], lower[position:match.start()], shouting)
            valences.append((match.group(0), _phrase_valence(match.group(0))))
            position = match.end()
        valences += _tokens(text[position:], lower[position:], shouting)
        scores: list[float] = []
        words: list[str] = []
        exclamations = 0
        but_at = -1
        last_sentiment = -1
        for word, valence in valences:
            if word == "!":
                exclamations += 1
                continue
            if word == "but":
                but_at = len(scores)
            words.append(word)
            if valence is None:
                scores.append(0.0)
                continue
            index = len(words) - 1
            value = valence
            # Intensifiers and dampeners just before it (up to three words back, fading with distance).
            for back, fade in ((1, 1.0), (2, 0.95), (3, 0.9)):
                if index - back < 0:
                    break
                boost = _BOOSTERS.get(words[index - back].replace("'", ""))
                if boost:
                    value += math.copysign(boost * fade, value)
            # Negation within the window, up to the previous sentiment word: a negator reverses the first one
            # after it ("don't appreciate being lied to": not "lied"). "not happy" is an idiom, already a phrase.
            start = max(0, index - _NEGATION_WINDOW, last_sentiment + 1)
            if any(_negates(w) for w in words[start:index]):
                value *= _NEGATION_SCALAR
            last_sentiment = index
            scores.append(value)
        if but_at >= 0:
            # "X but Y": what follows "but" is what the customer means.
            scores = [s * 0.5 for s in scores[:but_at]] + [s * 1.5 for s in scores[but_at:]]
        total = sum(scores)
        if total and exclamations:
            total += math.copysign(0.292 * min(exclamations, 4), total)
        return total / math.sqrt(total * total + _ALPHA) if total else 0.0


def _mostly_lowercase(text: str) -> bool:
    """Whether capitals in a word stand out (as shouting) in this text: some letters are lowercase."""
    return any(c.islower() for c in text)


def _tokens(original: str, lower: str, shouting_counts: bool) -> list[tuple[str, float | None]]:
    out: list[tuple[str, float | None]] = []
    for match in _WORD.finditer(original):
        word = match.group(0)
        low = lower[match.start():match.end()]
        key = low.replace("'", "")
        valence = _WORDS.get(key)
        if valence is None and key.endswith("s") and len(key) > 4:
            valence = _WORDS.get(key[:-1])
        if valence is not None and shouting_counts and len(word) > 1 and word.isupper():
            valence += math.copysign(0.733, valence)  # "this is UNACCEPTABLE"
        out.append((low, valence))
    return out


def _negates(word: str) -> bool:
    return word.replace("'", "") in _NEGATORS or word.endswith("n't")


LEXICON = LexiconScorer()


def score(text: str) -> Sentiment:
    """The lexicon's sentiment of ``text`` (the default scorer, synchronous)."""
    return LEXICON.sentiment(text)


# --- the embedding scorer ----------------------------------------------------------------------------
# Exemplars the turn is compared with. Short and typical: an embedding places a turn near the kind of thing a
# customer says when pleased or upset.
POSITIVE_ANCHORS: tuple[str, ...] = (
    "Thank you so much, that's sorted it.", "Cheers, you've been a great help.", "Brilliant, it's working now.",
    "I'm really happy with the service.", "No worries, thanks for your help.", "That's perfect, much appreciated.",
)
NEGATIVE_ANCHORS: tuple[str, ...] = (
    "I'm not happy with this at all.", "This is the third time I've called, it's ridiculous.",
    "I've been ripped off and I want my money back.", "Your service is terrible.",
    "I'm furious, nobody has fixed anything.", "I've been on hold for an hour, this is unacceptable.",
)
# Cosine gaps of this size map to the ends of the scale (embedding similarities sit in a narrow band).
_ANCHOR_SCALE = 4.0

Embed = Callable[[list[str]], Awaitable[list[list[float]]]]


class EmbeddingFailed(Exception):
    """The embedding call failed; ``reason`` is short and safe to record (a status or code, never text)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


def _cosine_unit(a: Sequence[float], b: Sequence[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=False))


class AnchorScorer:
    """Scores a turn by the tenant's embedding model: the mean of its top-2 cosine similarities to the positive
    anchors minus the same for the negative ones, scaled to [-1, 1]. ``embed`` sends texts to the model (the data
    plane's goes through the dispatch, billed like any `/v1/embeddings` request) and raises on failure, in which
    case the lexicon answers and ``Scored.fallback`` records why.

    The turn and the anchors go in one call, every turn, and nothing is kept between calls: whoever ``embed``
    bills pays for the anchors only with its own turn. A process-wide cache of the anchors' vectors would bill
    them to whichever tenant happened to come first and serve them to every other (shared platform work on one
    customer's bill, and another tenant's answer trusted for yours); the anchors are a few dozen short tokens."""

    name = "embedding"

    def __init__(self, model: str, embed: Embed, *, fallback: LexiconScorer = LEXICON) -> None:
        self.model = model
        self._embed = embed
        self._fallback = fallback

    async def score(self, text: str) -> Scored:
        try:
            vectors = await self._embed([text[:MAX_TEXT_CHARS], *POSITIVE_ANCHORS, *NEGATIVE_ANCHORS])
            if len(vectors) != 1 + len(POSITIVE_ANCHORS) + len(NEGATIVE_ANCHORS):
                raise EmbeddingFailed("embedding_count")
            turn = _unit(vectors[0])
            positive = [_unit(v) for v in vectors[1:1 + len(POSITIVE_ANCHORS)]]
            negative = [_unit(v) for v in vectors[1 + len(POSITIVE_ANCHORS):]]
            gap = _top_mean(turn, positive) - _top_mean(turn, negative)
            if not math.isfinite(gap):  # NaN would clamp to +1: a broken vector must not read as "positive"
                raise ValueError("non-finite embedding")
            return Scored(sentiment_of(gap * _ANCHOR_SCALE), self.name)
        except EmbeddingFailed as failed:
            reason = failed.reason
        except (ValueError, TypeError, ZeroDivisionError):
            reason = "malformed_embedding"
        return Scored(self._fallback.sentiment(text), self._fallback.name, fallback=f"embedding_failed: {reason}")


def _top_mean(turn: list[float], anchors: list[list[float]], k: int = 2) -> float:
    similarities = sorted((_cosine_unit(turn, a) for a in anchors), reverse=True)[:k]
    return sum(similarities) / len(similarities)


# --- escalation --------------------------------------------------------------------------------------
TRIGGER_PHRASE, NEGATIVE_SENTIMENT = "trigger_phrase", "negative_sentiment"


@dataclass(frozen=True, slots=True)
class EscalationRule:
    threshold: float = ccaas.DEFAULT_ESCALATION_THRESHOLD  # a turn at or below it is negative
    turns: int = ccaas.DEFAULT_ESCALATION_TURNS  # negative turns in a row that escalate; 0: never on sentiment
    phrases: tuple[str, ...] = ccaas.DEFAULT_ESCALATION_PHRASES  # any one escalates at once

    @classmethod
    def from_record(cls, record) -> EscalationRule:
        """The rule of a ``core.contract.TenantRecord`` (or anything with its three fields)."""
        return cls(threshold=float(record.escalation_threshold), turns=int(record.escalation_turns),
                   phrases=tuple(record.escalation_phrases))

    def digest(self) -> str:
        """SHA-256 (hex) of the rule's canonical JSON: what a decision record says of the rule it applied."""
        return _rule_digest(self.threshold, self.turns, self.phrases)

    def matcher(self) -> re.Pattern | None:
        return _phrase_matcher(self.phrases)


@dataclass(frozen=True, slots=True)
class Escalation:
    escalate: bool
    reason: str = ""  # "trigger_phrase" | "negative_sentiment" | ""
    detail: str = ""  # the tenant's phrase that matched, or the run of negative turns; never the customer's text

    def as_dict(self) -> dict:
        return {"flag": self.escalate, "reason": self.reason}


@lru_cache(maxsize=256)
def _rule_digest(threshold: float, turns: int, phrases: tuple[str, ...]) -> str:
    canonical = orjson.dumps({"threshold": threshold, "turns": turns, "phrases": list(phrases)},
                             option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@lru_cache(maxsize=256)
def _phrase_matcher(phrases: tuple[str, ...]) -> re.Pattern | None:
    """One case-insensitive pattern for the tenant's phrases, each on word boundaries, spaces matching any run of
    whitespace; at a position the longest phrase that matches there wins, so the detail names the most specific one.

    The phrases are merged into a trie of words: phrases sharing their first words share that part of the pattern,
    so each position of a turn is tried against each distinct prefix once. (As 50 separate alternatives of up to
    50 words that share all but the last, a crafted list cost ~28 ms on an 8,000-character turn, on the event
    loop every tenant's requests share; merged, about a millisecond.)"""
    trie: dict = {}
    for phrase in {_normalise(p) for p in phrases if p.strip()}:
        node = trie
        for word in phrase.split():
            node = node.setdefault(word, {})
        node[""] = {}  # a phrase ends here
    if not trie:
        return None
    return re.compile(r"(?<!\w)" + _trie_pattern(trie) + r"(?!\w)", re.IGNORECASE)


def _trie_pattern(node: dict) -> str:
    """The pattern of a trie node's continuations: longer words first, and at a word that ends a phrase but also
    continues, the continuation first (greedy), so the longest phrase at a position is the one matched."""
    alternatives = []
    for word in sorted((w for w in node if w), key=len, reverse=True):
        child = node[word]
        continues = [w for w in child if w]
        if not continues:
            alternatives.append(re.escape(word))
            continue
        rest = r"\s+" + _trie_pattern(child)
        alternatives.append(re.escape(word) + (f"(?:{rest})?" if "" in child else f"(?:{rest})"))
    return "(?:" + "|".join(alternatives) + ")"


def _normalise(text: str) -> str:
    return " ".join(text.translate(_APOSTROPHES).lower().split())


def decide(rule: EscalationRule, trail: Sequence[float], text: str, sentiment: Sentiment) -> Escalation:
    """Whether this customer turn hands the conversation to a person. ``trail``: the scores of the customer's
    previous turns, oldest first. A trigger phrase wins over sentiment; ``rule.turns`` negative turns in a row
    (this one and the ones just before it, each at or below ``rule.threshold``) escalate."""
    matcher = rule.matcher()
    if matcher is not None:
        match = matcher.search(text[:MAX_TEXT_CHARS].translate(_APOSTROPHES))
        if match is not None:
            return Escalation(True, TRIGGER_PHRASE, _normalise(match.group(0)))
    if rule.turns > 0 and sentiment.score <= rule.threshold:
        needed = rule.turns - 1
        recent = list(trail[-needed:]) if needed else []
        if len(recent) == needed and all(s <= rule.threshold for s in recent):
            return Escalation(True, NEGATIVE_SENTIMENT,
                              f"{rule.turns} turn{'s' if rule.turns != 1 else ''} in a row at or below "
                              f"{rule.threshold:g}")
    return Escalation(False)


def text_digest(text: str) -> str:
    """SHA-256 (hex) of a turn's text (UTF-8): how a decision record names the text it decided on."""
    return hashlib.sha256(text.encode()).hexdigest()


def decision_inputs_digest(*, text_sha256: str, rule_sha256: str, scorer: str, score: float,
                           trail: Sequence[tuple[str, float]]) -> str:
    """SHA-256 (hex) of the canonical JSON of everything a decision read: this turn's text digest and score, the
    scorer, the rule's digest, and the earlier customer turns the rule looked at as (text digest, score)."""
    canonical = orjson.dumps({"text": text_sha256, "rule": rule_sha256, "scorer": scorer, "score": score,
                              "trail": [[digest, value] for digest, value in trail]}, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()
