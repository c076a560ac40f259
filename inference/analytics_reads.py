"""Reads for the console's and the management API's conversation pages: closed conversations with their current
analysis, filtered and paged by keyset (closing time, then id), one tenant at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.http import Http404
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from core import ccaas
from inference.analytics import RUBRIC, RUBRIC_VERSION
from inference.models import Conversation, ConversationAnalysis
from tenants.models import Tenant

PAGE_SIZE = 50
EXPORT_MAX_ROWS = 50_000
_ESCALATED = [("", "All"), ("yes", "Escalated"), ("no", "Not escalated")]


# --- filters -------------------------------------------------------------------------------------
class ConversationFilter(forms.Form):
    channel = forms.ChoiceField(required=False, choices=[("", "All"), *((k, v[0]) for k, v in ccaas.CHANNELS.items())])
    escalated = forms.ChoiceField(required=False, choices=_ESCALATED)
    qa_min = forms.IntegerField(label="QA score from", required=False, min_value=0, max_value=100)
    qa_max = forms.IntegerField(label="QA score to", required=False, min_value=0, max_value=100)
    since = forms.DateField(label="Closed from", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    until = forms.DateField(label="Closed until", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    after = forms.CharField(required=False, max_length=80, widget=forms.HiddenInput)

    def clean_after(self) -> tuple[datetime, str] | None:
        return decode_cursor(self.cleaned_data["after"])

    def clean(self):
        data = super().clean()
        if data.get("qa_min") is not None and data.get("qa_max") is not None and data["qa_min"] > data["qa_max"]:
            raise ValidationError("The QA score range starts above where it ends.")
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ValidationError("The dates are the wrong way round.")
        return data


def encode_cursor(conversation: Conversation) -> str:
    return f"{conversation.closed_at.timestamp():.6f}_{conversation.pk}"


def decode_cursor(raw: str) -> tuple[datetime, str] | None:
    """The position after which the next page starts; a cursor that isn't one is a form error, not a 500."""
    if not raw:
        return None
    try:
        stamp, pk = raw.split("_")
        import uuid

        return datetime.fromtimestamp(float(stamp), tz=UTC), str(uuid.UUID(pk))
    except (ValueError, OverflowError, OSError):
        raise ValidationError("That page link is broken: start again from the first page.") from None


# --- reads ---------------------------------------------------------------------------------------
def _current(field: str) -> Subquery:
    return Subquery(ConversationAnalysis.objects.filter(conversation=OuterRef("pk"), rubric_version=RUBRIC_VERSION)
                    .values(field)[:1])


def conversations_for_tenant(*, tenant: Tenant, channel: str = "", escalated: str = "", qa_min: int | None = None,
                             qa_max: int | None = None, since: date | None = None,
                             until: date | None = None) -> QuerySet[Conversation]:
    """A tenant's closed conversations, newest first, annotated with the current analysis's ``qa_score`` and
    ``analysis_status`` (None when it wasn't sampled). ``since``/``until`` are whole days (UTC), inclusive."""
    qs = (Conversation.objects.filter(tenant=tenant)
          .annotate(qa_score=_current("qa_score"), analysis_status=_current("status")))
    if channel:
        qs = qs.filter(channel=channel)
    if escalated:
        qs = qs.filter(escalated=escalated == "yes")
    if qa_min is not None:
        qs = qs.filter(qa_score__gte=qa_min)
    if qa_max is not None:
        qs = qs.filter(qa_score__lte=qa_max)
    if since is not None:
        qs = qs.filter(closed_at__gte=datetime.combine(since, time.min, tzinfo=UTC))
    if until is not None and until < date.max:  # the calendar's last day has no next one (every row is before it)
        qs = qs.filter(closed_at__lt=datetime.combine(until + timedelta(days=1), time.min, tzinfo=UTC))
    return qs.order_by("-closed_at", "-pk")


def conversation_page(*, tenant: Tenant, after: tuple[datetime, str] | None = None, size: int = PAGE_SIZE,
                      **filters) -> tuple[list[Conversation], str | None]:
    """One page, newest first, and the cursor of the next (None: the last page)."""
    qs = conversations_for_tenant(tenant=tenant, **filters)
    if after is not None:
        at, pk = after
        qs = qs.filter(Q(closed_at__lt=at) | Q(closed_at=at, pk__lt=pk))
    rows = list(qs[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return rows, (encode_cursor(rows[-1]) if more and rows else None)


def conversation_get(*, tenant: Tenant, conversation_pk) -> Conversation:
    """One of the tenant's conversations, or 404 (another tenant's too)."""
    conversation = Conversation.objects.filter(tenant=tenant, pk=conversation_pk).first()
    if conversation is None:
        raise Http404
    return conversation


def analysis_current(*, conversation: Conversation) -> ConversationAnalysis | None:
    return conversation.analyses.filter(rubric_version=RUBRIC_VERSION).first()


@dataclass(frozen=True)
class RubricRow:
    item: str
    label: str
    score: int | None
    reason: str


def rubric_rows(analysis: ConversationAnalysis | None) -> list[RubricRow]:
    scores = (analysis.rubric if analysis is not None else None) or {}
    return [RubricRow(item=item, label=item.capitalize(), score=(scores.get(item) or {}).get("score"),
                      reason=(scores.get(item) or {}).get("reason", "")) for item in RUBRIC]


EXPORT_HEADER = ["conversation_id", "closed_at", "opened_at", "channel", "language", "customer_id", "key_id",
                 "model", "turns", "escalated", "escalation_reason", "sentiment_mean", "sentiment_min",
                 "analysis_status", "qa_score"]


def conversation_export_rows(*, tenant: Tenant, **filters) -> Iterator[list]:
    """The list's rows for a CSV, at most ``EXPORT_MAX_ROWS``: no summaries or reasons (content stays on the
    detail page)."""
    qs = conversations_for_tenant(tenant=tenant, **filters)[:EXPORT_MAX_ROWS]
    for c in qs.iterator(chunk_size=2000):
        trail = [float(s) for s in c.sentiment_trail or []]
        yield [c.conversation_id, c.closed_at.isoformat(), c.opened_at.isoformat(), c.channel, c.language,
               c.customer_id, c.key_id, c.model, c.turn_count, "yes" if c.escalated else "no", c.escalation_reason,
               f"{sum(trail) / len(trail):.3f}" if trail else "", f"{min(trail):.3f}" if trail else "",
               c.analysis_status or "not sampled", "" if c.qa_score is None else c.qa_score]


# --- the sentiment trail as SVG ------------------------------------------------------------------
_W, _H, _PAD = 320, 100, 8


def sentiment_svg(trail: list[float]) -> SafeString:
    """The customer's sentiment turn by turn, -1 to 1, as a small server-rendered SVG (no script: CSP, and the
    numbers a test reads are the ones the page shows). Colours are classes in ``static/css/conversations.css``."""
    values = [max(-1.0, min(1.0, float(v))) for v in trail if isinstance(v, int | float) and math.isfinite(v)]
    if not values:
        return format_html('<p class="muted">No customer turns were scored.</p>')
    step = (_W - 2 * _PAD) / max(1, len(values) - 1)

    def y(v: float) -> float:
        return round(_PAD + (1 - v) / 2 * (_H - 2 * _PAD), 1)

    points = [(round(_PAD + i * step, 1), y(v)) for i, v in enumerate(values)]
    line = " ".join(f"{x},{py}" for x, py in points)
    dots = format_html_join(
        "", '<circle class="sentiment-dot" cx="{}" cy="{}" r="3"><title>Turn {}: {}</title></circle>',
        ((x, py, i + 1, f"{v:+.2f}") for i, ((x, py), v) in enumerate(zip(points, values, strict=True))))
    label = (f"Customer sentiment over {len(values)} scored turns, from {values[0]:+.2f} to {values[-1]:+.2f}; "
             f"lowest {min(values):+.2f}.")
    return format_html(
        '<svg class="sentiment-chart" role="img" aria-label="{}" viewBox="0 0 {} {}" width="{}" height="{}">'
        '<line class="sentiment-zero" x1="{}" y1="{}" x2="{}" y2="{}"/>'
        '<polyline class="sentiment-line" points="{}" fill="none"/>{}</svg>',
        label, _W, _H, _W, _H, _PAD, y(0), _W - _PAD, y(0), line, dots)
