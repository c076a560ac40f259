"""Where the personal information of a tenant's end customers is held, for individuals' requests (R-DSR).

Each app that keeps something keyed by an end-customer id registers a ``Holder`` in its ``AppConfig.ready()``:
billing the access records, inference the conversations and their analyses, audit the transcripts and
annotations. ``audit.privacy_requests`` asks every registered holder, so audit never imports what it records,
and an app that starts keeping end-customer data adds a holder, not a branch here. A test asks each app that
holds a ``customer_id`` column to have registered one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Holder:
    """``name``: the section of the export document. Each callable takes the tenant id (str) and the customer id.

    - ``export(tenant_id, customer_id) -> Iterable[dict]``: every record held, JSON-serialisable; a generator
      reading in chunks for a holding that may be large (the download writes records out as they come).
    - ``count(tenant_id, customer_id) -> int`` (optional): how many records ``export`` gives, without reading
      them (else they are read once to count).
    - ``erase(tenant_id, customer_id) -> int``: content deleted and the rest de-identified; how many records.
    - ``rekey(tenant_id, customer_id, new_customer_id) -> int``: the records moved to another id (a correction).
    """

    name: str
    description: str
    export: Callable[[str, str], Iterable[dict]]
    erase: Callable[[str, str], int]
    rekey: Callable[[str, str, str], int]
    models: tuple[str, ...] = ()  # the models it answers for ("app_label.modelname")
    count: Callable[[str, str], int] | None = None


_HOLDERS: dict[str, Holder] = {}


def register(holder: Holder) -> None:
    _HOLDERS[holder.name] = holder


def holders() -> list[Holder]:
    return [_HOLDERS[name] for name in sorted(_HOLDERS)]


def covered_models() -> frozenset[str]:
    return frozenset(label for holder in _HOLDERS.values() for label in holder.models)
