"""The tenant console's conversation pages: closed conversations with their post-call analysis (list with filters
and keyset paging, CSV export of the list, detail with summary, rubric scores, sentiment trail and escalation).
Who may see them: ``Action.CONVERSATIONS_VIEW`` (docs/accounts.md)."""

from __future__ import annotations

import csv

from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from inference import analytics_reads as reads
from inference.analytics import RUBRIC_VERSION
from tenants.permissions import Action
from tenants.views.common import tenant_view


class _Echo:
    def write(self, value: str) -> str:
        return value


def _safe_cell(value) -> str:
    # A cell a spreadsheet would run as a formula (a tenant's metadata or an id starting with "=") is quoted.
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@require_GET
@tenant_view(Action.CONVERSATIONS_VIEW)
def conversations(request, access):
    form = reads.ConversationFilter(request.GET or None)
    status = 200
    filters: dict = {}
    if form.is_bound:
        if form.is_valid():
            filters = {k: v for k, v in form.cleaned_data.items() if v not in ("", None)}
        else:
            status = 400
    after = filters.pop("after", None)
    if request.GET.get("export") == "csv" and status == 200:
        return _export(access.tenant, filters)
    rows, next_cursor = reads.conversation_page(tenant=access.tenant, after=after, **filters) if status == 200 \
        else ([], None)
    query = request.GET.copy()
    query.pop("after", None)
    query.pop("export", None)
    return render(request, "inference/conversations.html", {
        "tenant": access.tenant, "form": form, "rows": rows, "next_cursor": next_cursor,
        "filters": query.urlencode(), "first_page": after is None,
    }, status=status)


def _export(tenant, filters: dict):
    writer = csv.writer(_Echo())
    lines = (writer.writerow([_safe_cell(v) for v in row])
             for row in _with_header(reads.conversation_export_rows(tenant=tenant, **filters)))
    response = StreamingHttpResponse(lines, content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="conversations-{tenant.slug}-{stamp}.csv"'
    return response


def _with_header(rows):
    yield reads.EXPORT_HEADER
    yield from rows


@require_GET
@tenant_view(Action.CONVERSATIONS_VIEW)
def conversation_detail(request, access, conversation_pk):
    conversation = reads.conversation_get(tenant=access.tenant, conversation_pk=conversation_pk)
    analysis = reads.analysis_current(conversation=conversation)
    return render(request, "inference/conversation_detail.html", {
        "tenant": access.tenant, "conversation": conversation, "analysis": analysis,
        "rubric": reads.rubric_rows(analysis), "rubric_version": RUBRIC_VERSION,
        "sentiment_chart": reads.sentiment_svg(conversation.sentiment_trail or []),
    })


