"""The request log: every `/v1` request of a tenant, newest first, one page at a time.

The only console page that reads raw usage events. It stays fast at any volume because it never counts or
offsets: keyset pagination walks the ``usage_tenant_time`` index from a cursor (the last row's time and id), so
page 1,000 costs what page 1 costs. Filters narrow what the index returns; a day window bounds the walk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from billing import pricing
from billing.models import UsageEvent
from core.keys import SURFACE_KEY_NAMES
from tenants.models import ApiKey, Tenant
from tenants.permissions import Action
from tenants.views.common import tenant_view

PAGE_SIZE = 50
_MAX_DAYS = 31
_FIELD_MAX = 200


class RequestLogFilter(forms.Form):
    key = forms.CharField(label="Key id", required=False, max_length=16)
    model = forms.CharField(required=False, max_length=_FIELD_MAX)
    outcome = forms.ChoiceField(
        required=False, choices=[("", "All"), ("ok", "Succeeded"), ("error", "Failed")], initial=""
    )
    days = forms.TypedChoiceField(
        label="Period", coerce=int, required=False, initial=7, empty_value=7,
        choices=[(1, "Last 24 hours"), (7, "Last 7 days"), (_MAX_DAYS, "Last 31 days")],
    )
    after = forms.CharField(required=False, max_length=64, widget=forms.HiddenInput)

    def clean_key(self) -> str:
        key = self.cleaned_data["key"].strip().removeprefix("wtl_").split("_")[0]
        if key and not key.isalnum():
            raise ValidationError("A key id has letters and digits only, like the part after “wtl_”.")
        return key

    def clean_after(self) -> tuple[datetime, int] | None:
        return decode_cursor(self.cleaned_data["after"])


def encode_cursor(event: UsageEvent) -> str:
    return f"{event.created_at.timestamp():.6f}_{event.pk}"


def decode_cursor(raw: str) -> tuple[datetime, int] | None:
    """The position after which the next page starts; a cursor that isn't one is a form error, not a 500."""
    if not raw:
        return None
    try:
        stamp, pk = raw.split("_")
        return datetime.fromtimestamp(float(stamp), tz=UTC), int(pk)
    except (ValueError, OverflowError, OSError):
        raise ValidationError("That page link is broken: start again from the first page.") from None


@dataclass(frozen=True)
class LogRow:
    event: UsageEvent
    key_name: str
    cost_aud: Decimal | None


def request_log_page(*, tenant: Tenant, key: str = "", model: str = "", outcome: str = "", days: int = 7,
                     after: tuple[datetime, int] | None = None, now: datetime | None = None,
                     size: int = PAGE_SIZE) -> tuple[list[UsageEvent], str | None]:
    """One page of a tenant's usage events, newest first, and the cursor of the next page (None: last page)."""
    now = now or timezone.now()
    qs = UsageEvent.objects.filter(tenant=tenant, created_at__gte=now - timedelta(days=days))
    if key:
        qs = qs.filter(key_id=key)
    if model:
        qs = qs.filter(model=model)
    if outcome == "ok":
        qs = qs.filter(status__lt=400)
    elif outcome == "error":
        qs = qs.filter(status__gte=400)
    if after is not None:
        at, pk = after
        qs = qs.filter(Q(created_at__lt=at) | Q(created_at=at, pk__lt=pk))
    rows = list(qs.order_by("-created_at", "-pk")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return rows, (encode_cursor(rows[-1]) if more and rows else None)


def _cost(event: UsageEvent, prices: dict[str, pricing.Price]) -> Decimal | None:
    """At the tenant's prices now (its plan's own, else the platform's); None for a model without a price."""
    return pricing.cost_aud(prices.get(event.model), event.prompt_tokens, event.completion_tokens)


@require_GET
@tenant_view(Action.USAGE_VIEW)
def request_logs(request, access):
    form = RequestLogFilter(request.GET or None)
    status = 200
    options: dict = {}
    if form.is_bound:
        if form.is_valid():
            options = {k: v for k, v in form.cleaned_data.items() if v not in ("", None)}
        else:
            status = 400
    events, next_cursor = request_log_page(tenant=access.tenant, **options) if status == 200 else ([], None)
    key_names = dict(ApiKey.objects.filter(tenant=access.tenant).values_list("key_id", "name"))
    key_names.update(SURFACE_KEY_NAMES)
    prices = pricing.prices_for_plan(pricing.tenant_plan(access.tenant)) if events else {}
    rows = [LogRow(event=e, key_name=key_names.get(e.key_id, ""), cost_aud=_cost(e, prices)) for e in events]
    query = request.GET.copy()
    query.pop("after", None)
    return render(request, "billing/request_logs.html", {
        "tenant": access.tenant, "form": form, "rows": rows, "next_cursor": next_cursor,
        "filters": query.urlencode(), "first_page": not options.get("after"), "page_size": PAGE_SIZE,
        "surface_keys": tuple(SURFACE_KEY_NAMES),
    }, status=status)
