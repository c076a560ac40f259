"""The sentiment scorers and the escalation decision (``core.sentiment``), and the measurement that chose the
lexicon: our scorer against VADER on labelled contact-centre turns (tests/core/data/)."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from pathlib import Path

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from core import ccaas, contract, sentiment
from core.sentiment import Escalation, EscalationRule, Sentiment, decide

DATA = Path(__file__).parent / "data"
# What docs/conversations.md reports (held-out set: never used to tune the lexicon). A change to the lexicon that
# moves these should update the docs.
FLOOR_TUNING = 0.95
FLOOR_HOLDOUT = 0.90


def _load(name: str) -> list[tuple[str, str]]:
    rows = []
    for line in (DATA / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            label, text = line.split("\t")
            rows.append((label, text))
    return rows


def _vader_label(analyser, text: str) -> str:
    # VADER's documented thresholds on its compound score.
    compound = analyser.polarity_scores(text)["compound"]
    return "negative" if compound <= -0.05 else "positive" if compound >= 0.05 else "neutral"


def _accuracy_and_macro_f1(rows, predict) -> tuple[float, float]:
    predicted = [predict(text) for _, text in rows]
    gold = [label for label, _ in rows]
    accuracy = sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(rows)
    f1s = []
    for label in sentiment.LABELS:
        tp = sum(p == g == label for p, g in zip(predicted, gold, strict=True))
        fp = sum(p == label != g for p, g in zip(predicted, gold, strict=True))
        fn = sum(g == label != p for p, g in zip(predicted, gold, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return accuracy, sum(f1s) / len(f1s)


def test_the_labelled_sets_are_big_enough_and_balanced():
    rows = _load("contact_centre_sentiment.tsv")
    assert len(rows) >= 200
    counts = {label: sum(1 for lab, _ in rows if lab == label) for label in sentiment.LABELS}
    assert set(counts.values()) == {70}
    holdout = _load("contact_centre_sentiment_holdout.tsv")
    assert {sum(1 for lab, _ in holdout if lab == label) for label in sentiment.LABELS} == {20}
    assert not {t for _, t in rows} & {t for _, t in holdout}


@pytest.mark.parametrize(("name", "floor"), [("contact_centre_sentiment.tsv", FLOOR_TUNING),
                                             ("contact_centre_sentiment_holdout.tsv", FLOOR_HOLDOUT)])
def test_the_lexicon_is_accurate_and_beats_vader_on_contact_centre_turns(name, floor):
    rows = _load(name)
    ours = _accuracy_and_macro_f1(rows, lambda t: sentiment.score(t).label)
    analyser = SentimentIntensityAnalyzer()
    vader = _accuracy_and_macro_f1(rows, lambda t: _vader_label(analyser, t))
    assert ours[0] >= floor
    assert ours[0] >= vader[0] and ours[1] >= vader[1], (ours, vader)


def test_lexicon_scoring_takes_well_under_a_millisecond_at_the_median():
    texts = [t for _, t in _load("contact_centre_sentiment.tsv")]
    timings = []
    for text in texts * 3:
        started = time.perf_counter()
        sentiment.score(text)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.001  # the bar is "a few milliseconds"; we measure ~11 µs


@pytest.mark.parametrize(("text", "label"), [
    ("I'm not happy with this", "negative"),
    ("I'm NOT happy, this is UNACCEPTABLE", "negative"),
    ("You've ripped me off", "negative"),
    ("Cheers mate", "positive"),
    ("No worries at all", "positive"),
    ("Mate, I've been on hold for an hour again", "negative"),
    ("Great, but it's still broken and I'm furious", "negative"),
    ("It was broken but you've fixed it, thanks heaps", "positive"),
    ("This isn't good", "negative"),
    ("Not bad at all", "positive"),
    ("I'd like to update my address please", "neutral"),
    ("", "neutral"),
])
def test_lexicon_reads_contact_centre_idiom(text, label):
    assert sentiment.score(text).label == label


def test_intensifiers_and_exclamation_strengthen_a_score():
    plain, boosted, shouted = (sentiment.score(t).score for t in ("It's good", "It's really good", "It's good!!"))
    assert plain < boosted and plain < shouted
    assert sentiment.score("It's bad").score >= sentiment.score("It's terrible!!!").score


def test_scores_are_bounded_and_labels_follow_the_band():
    assert sentiment.score("terrible " * 500).score >= -1.0
    assert sentiment.score("brilliant " * 500).score <= 1.0
    assert sentiment.sentiment_of(5) == Sentiment(1.0, "positive")
    assert sentiment.sentiment_of(-sentiment.NEUTRAL_BAND).label == "negative"
    assert sentiment.sentiment_of(0.29).label == "neutral"


# --- escalation ----------------------------------------------------------------------------------
def test_a_trigger_phrase_escalates_at_once_case_insensitive_on_word_boundaries():
    rule = EscalationRule(threshold=-0.5, turns=2, phrases=("speak to a human", "supervisor"))
    calm = Sentiment(0.0, "neutral")
    decision = decide(rule, [], "Can I SPEAK   to a Human please", calm)
    assert decision == Escalation(True, "trigger_phrase", "speak to a human")
    assert decide(rule, [], "my supervisors said so", calm).escalate is False  # not a whole word
    assert decide(rule, [], "the supervisor's note", calm).reason == "trigger_phrase"
    assert decide(rule, [], "speak to a humane society", calm).escalate is False


def test_consecutive_negative_turns_escalate_on_the_nth():
    rule = EscalationRule(threshold=-0.5, turns=3, phrases=())
    bad = Sentiment(-0.6, "negative")
    assert decide(rule, [], "x", bad).escalate is False
    assert decide(rule, [-0.7], "x", bad).escalate is False
    assert decide(rule, [0.2, -0.7, -0.5], "x", bad) == Escalation(
        True, "negative_sentiment", "3 turns in a row at or below -0.5")
    assert decide(rule, [-0.7, 0.1, -0.9], "x", bad).escalate is False  # the run was broken
    assert decide(rule, [-0.9, -0.9], "x", Sentiment(-0.49, "negative")).escalate is False


def test_zero_turns_never_escalates_on_sentiment_and_one_turn_escalates_alone():
    assert decide(EscalationRule(-0.5, 0, ()), [-1.0] * 5, "x", Sentiment(-1.0, "negative")).escalate is False
    assert decide(EscalationRule(-0.5, 1, ()), [], "x", Sentiment(-0.5, "negative")).reason == "negative_sentiment"


def test_the_rule_comes_from_the_tenant_record_and_has_a_stable_digest():
    record = contract.TenantRecord(tenant="t", status="active", escalation_threshold=-0.3, escalation_turns=4,
                                   escalation_phrases=("supervisor",))
    rule = EscalationRule.from_record(record)
    assert rule == EscalationRule(-0.3, 4, ("supervisor",))
    assert rule.digest() == EscalationRule(-0.3, 4, ("supervisor",)).digest()
    assert rule.digest() != EscalationRule(-0.3, 3, ("supervisor",)).digest()
    assert len(rule.digest()) == 64
    default = EscalationRule.from_record(contract.TenantRecord(tenant="t", status="active"))
    assert default.phrases == ccaas.DEFAULT_ESCALATION_PHRASES and default.turns == ccaas.DEFAULT_ESCALATION_TURNS


# --- the embedding scorer ------------------------------------------------------------------------
def _bag_of_words_embed(calls: list[list[str]]):
    """A stand-in embedding model (the network edge): a vector of word counts over a small vocabulary."""
    vocabulary = ["thank", "thanks", "great", "happy", "sorted", "cheers", "terrible", "furious", "ripped",
                  "unacceptable", "hold", "ridiculous", "not", "money"]

    async def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        return [[float(text.lower().count(word)) + 0.01 for word in vocabulary] for text in texts]

    return embed


def test_the_embedding_scorer_embeds_the_turn_with_the_anchors_in_one_call():
    calls: list[list[str]] = []
    scorer = sentiment.AnchorScorer("embed-a", _bag_of_words_embed(calls))

    async def run():
        happy = await scorer.score("Thanks, great, all sorted")
        angry = await scorer.score("This is terrible and unacceptable, I'm furious")
        return happy, angry

    happy, angry = asyncio.run(run())
    assert happy.scorer == angry.scorer == "embedding" and not happy.fallback
    assert happy.sentiment.label == "positive" and angry.sentiment.label == "negative"
    # One call per turn, the turn first and the exemplars after it: whoever pays for the call pays for its own turn.
    assert len(calls) == 2
    assert calls[0] == ["Thanks, great, all sorted", *sentiment.POSITIVE_ANCHORS, *sentiment.NEGATIVE_ANCHORS]


def test_one_callers_embedding_of_the_anchors_never_serves_another_caller():
    """Each caller's ``embed`` is billed to its own tenant: no vectors are shared between callers (not billed to
    whoever came first, and not trusted from another tenant's model either)."""
    first: list[list[str]] = []
    second: list[list[str]] = []
    asyncio.run(sentiment.AnchorScorer("embed-shared", _bag_of_words_embed(first)).score("Thanks, great"))
    asyncio.run(sentiment.AnchorScorer("embed-shared", _bag_of_words_embed(second)).score("Thanks, great"))
    assert first == second  # the second caller embedded (and paid for) exactly what the first did


def test_a_wrong_number_of_vectors_falls_back():
    async def short(texts):
        return [[1.0, 0.0]] * (len(texts) - 1)

    scored = asyncio.run(sentiment.AnchorScorer("embed-d", short).score("I'm not happy"))
    assert scored.scorer == "lexicon" and scored.fallback == "embedding_failed: embedding_count"


def test_the_embedding_scorer_falls_back_to_the_lexicon_and_says_why():
    async def failing(texts):
        raise sentiment.EmbeddingFailed("503 service_unavailable")

    scored = asyncio.run(sentiment.AnchorScorer("embed-b", failing).score("I'm not happy"))
    assert scored.scorer == "lexicon" and scored.fallback == "embedding_failed: 503 service_unavailable"
    assert scored.sentiment == sentiment.score("I'm not happy")

    async def malformed(texts):
        return [[math.nan] * 3 for _ in texts][:1]

    assert asyncio.run(sentiment.AnchorScorer("embed-c", malformed).score("ok")).fallback.startswith(
        "embedding_failed")


def test_non_finite_vectors_fall_back_rather_than_read_as_positive():
    """NaN compares false with everything, so a NaN score would clamp to +1 ("positive") and never escalate."""
    async def nan_vectors(texts):
        return [[math.nan, 1.0, 0.5] for _ in texts]

    scored = asyncio.run(sentiment.AnchorScorer("embed-e", nan_vectors).score("I'm furious, this is unacceptable"))
    assert scored.scorer == "lexicon" and scored.fallback == "embedding_failed: malformed_embedding"
    assert scored.sentiment.label == "negative"


def test_trigger_phrases_are_literal_text_never_patterns():
    """A tenant's phrase is matched as the words it says: regular-expression syntax in it matches only itself."""
    rule = EscalationRule(phrases=(".*", "a+b", "(refund)", "[manager]", "\\d"))
    neutral = sentiment.Sentiment(0.0, "neutral")
    assert not decide(rule, [], "anything at all, aab, refund, manager, 7", neutral).escalate
    assert decide(rule, [], "I want my (refund) now", neutral).detail == "(refund)"
    assert decide(rule, [], "so a+b then", neutral).escalate


def test_phrases_sharing_words_match_the_longest_at_a_position():
    rule = EscalationRule(phrases=("speak to", "speak to a human", "speak to a manager", "manager", "a"))
    neutral = sentiment.Sentiment(0.0, "neutral")
    assert decide(rule, [], "I need to speak to a manager now", neutral).detail == "speak to a manager"
    assert decide(rule, [], "SPEAK   TO A\nHUMAN please", neutral).detail == "speak to a human"
    assert decide(rule, [], "can I speak to someone", neutral).detail == "speak to"
    assert decide(rule, [], "speak to a manageress", neutral).detail == "speak to"
    assert not decide(rule, [], "speaking tomorrow, managers", neutral).escalate


def test_a_crafted_phrase_list_costs_little_on_the_longest_turn():
    """50 phrases of 100 characters sharing all but their last word, against an 8,000-character turn of that
    prefix: tried as 50 separate alternatives this took ~28 ms of the event loop every tenant shares."""
    import time

    rule = EscalationRule(phrases=tuple(("a " * 49 + f"x{i}")[:100] for i in range(50)))
    text = "a " * 4000
    neutral = sentiment.Sentiment(0.0, "neutral")
    decide(rule, [], text, neutral)  # compiled once per rule
    started = time.perf_counter()
    for _ in range(5):
        assert not decide(rule, [], text, neutral).escalate
    assert (time.perf_counter() - started) / 5 < 0.010
