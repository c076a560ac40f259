"""A member's own playground history (docs/playground.md "History"), read from the tenant's retained transcripts.

When the tenant keeps transcripts, each playground reply's record carries the page's chat session
(``conversation_id``, a new one on Reset) and the member who sent it (``member``, their user id): see
``inference.consumers``. Here those rows are grouped into conversations for the member who sent them, and only
for them: a conversation id of another member's, or of another tenant's, is not found. Owners and admins read
everything through the transcripts pages, as before.

Every decryption is audited as the transcripts pages' reads are (``transcript.read``, identifiers only): a
re-open reads the conversation's latest turn (its prompt holds the whole conversation as it was sent, and its
reply the model's last answer); the list reads each listed conversation's first turn for its opening words, in
one entry per listing. Synchronous (ORM): called from the views in ``inference.views``.
"""

from __future__ import annotations

import re

from django.db.models import Count, Max, Min
from django.utils import timezone

from audit import envelope
from audit.models import Transcript
from audit.services import record
from audit.transcripts import transcript_content
from core.keys import PLAYGROUND_KEY_ID

LIST_LIMIT = 20  # conversations listed, newest first
PREVIEW_CHARS = 80  # of the first message
CONVERSATION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what the socket accepts (``inference.playground``)
_ROLES = frozenset({"system", "user", "assistant"})


class Unreadable(Exception):
    """The conversation's content no longer decrypts (its key is gone, or the row was altered)."""


class Unavailable(Exception):
    """The key service (KMS) can't be reached just now: the content is there, try again shortly."""


def enabled(tenant) -> bool:
    """History exists only while the tenant keeps transcripts: with retention off nothing is stored."""
    return tenant.retention_days > 0


def _mine(tenant, user):
    """The member's own playground rows that haven't expired (the daily job may not have destroyed them yet)."""
    return Transcript.objects.filter(tenant_id=tenant.pk, member=str(user.pk), key_id=PLAYGROUND_KEY_ID,
                                     kind="request", expires_at__gt=timezone.now()).exclude(conversation_id="")


def _open(row: Transcript) -> dict:
    return envelope.open_sealed(envelope.plaintext_key(row.data_key), str(row.tenant_id), str(row.pk), row.sealed)


def _messages(prompt) -> list[dict]:
    """The chat messages of a stored prompt, only the parts the page uses (role and text)."""
    if not isinstance(prompt, list):
        return []
    return [{"role": m["role"], "content": m["content"]} for m in prompt
            if isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)]


def _preview(prompt) -> str:
    """The opening words of the conversation's first message (the member's, not the system prompt's)."""
    text = next((m["content"] for m in _messages(prompt) if m["role"] == "user"), "")
    text = " ".join(text.split())
    if len(text) <= PREVIEW_CHARS:
        return text
    cut = text[:PREVIEW_CHARS].rsplit(" ", 1)[0] or text[:PREVIEW_CHARS]
    return cut + "…"


def conversations(*, tenant, user, request=None) -> list[dict]:
    """The member's playground conversations, the most recently used first: when each started, its model (the
    latest turn's), how many turns, and the first message's opening words. One audit entry if any content was
    read for the list."""
    groups = list(_mine(tenant, user).values("conversation_id")
                  .annotate(started=Min("created_at"), last=Max("created_at"), turns=Count("pk"))
                  .order_by("-last", "conversation_id")[:LIST_LIMIT])
    if not groups:
        return []
    ids = [g["conversation_id"] for g in groups]
    first: dict[str, object] = {}
    model: dict[str, str] = {}
    for pk, conversation_id, row_model in (_mine(tenant, user).filter(conversation_id__in=ids)
                                           .order_by("created_at", "pk")
                                           .values_list("pk", "conversation_id", "model")):
        first.setdefault(conversation_id, pk)
        model[conversation_id] = row_model  # the latest wins
    rows = {row.conversation_id: row for row in
            Transcript.objects.filter(pk__in=list(first.values())).select_related("data_key")}
    listed, read, reachable = [], [], True
    for group in groups:
        row = rows.get(group["conversation_id"])
        preview = ""
        if row is not None and reachable:
            try:
                preview = _preview(_open(row).get("prompt"))
                read.append(row.request_id)
            except envelope.DecryptionError:
                pass
            except envelope.KeyServiceUnavailable:
                reachable = False  # listed without previews, rather than waiting on KMS for every row
        listed.append({"id": group["conversation_id"], "started": group["started"].isoformat(),
                       "last": group["last"].isoformat(), "model": model.get(group["conversation_id"], ""),
                       "turns": group["turns"], "preview": preview})
    if read:  # only what was decrypted is a read
        record(action="transcript.read", actor=user, tenant=tenant, request=request,
               data={"surface": "playground_history", "conversations": len(listed), "request_ids": read})
    return listed


def conversation(*, tenant, user, conversation_id: str, request=None) -> dict | None:
    """One of the member's conversations to continue in the page: its messages as last sent (system prompt
    included) and the model's last reply, or None if the member has no such conversation. The read is audited
    (``transcript.read`` of its latest turn). Raises ``Unreadable`` if it no longer decrypts, ``Unavailable`` if
    the key service can't be reached."""
    if not CONVERSATION_ID.fullmatch(conversation_id or ""):
        return None
    rows = _mine(tenant, user).filter(conversation_id=conversation_id)
    latest = rows.select_related("data_key", "tenant").order_by("-created_at", "-pk").first()
    if latest is None:
        return None
    summary = rows.aggregate(started=Min("created_at"), turns=Count("pk"))
    try:
        content = transcript_content(transcript=latest, actor=user, request=request)
    except envelope.DecryptionError:
        raise Unreadable from None
    except envelope.KeyServiceUnavailable:
        raise Unavailable from None
    messages = _messages(content.get("prompt"))
    reply = content.get("reply")
    if isinstance(reply, str) and reply:
        messages.append({"role": "assistant", "content": reply})
    return {"id": conversation_id, "model": latest.model, "started": summary["started"].isoformat(),
            "turns": summary["turns"], "messages": messages}
