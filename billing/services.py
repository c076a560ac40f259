"""Usage ingest: from the data plane's Redis stream into PostgreSQL, idempotently."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from audit.services import record
from billing import pricing
from billing.limits import LIMIT_FIELDS
from billing.models import ModelPrice, Plan, PlanModelPrice, TenantQuota, UsageEvent
from core import contract, quotas
from core.redis import get_redis
from core.streams import GroupReader
from tenants.models import Tenant

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.http import HttpRequest

logger = logging.getLogger("wattle.usage")
_UNCHANGED = object()

INGEST_GROUP = settings.USAGE_INGEST_GROUP
# PostgreSQL hands out ids when rows are inserted, not when they commit: two ingest transactions can commit out of
# id order, so a reader that goes by id (the rollup job's watermark) could pass an id whose row is not visible yet
# and never come back for it. Every ingest transaction holds this advisory lock shared; the rollup job takes it
# exclusively for the instant it reads max(id) (billing.rollups), so every id up to that max is committed.
USAGE_COMMIT_LOCK = 0x5754_4C55  # "WTLU"


_COLUMNS = (
    "request_id", "tenant_id", "key_id", "endpoint", "model", "backend", "status", "error_code", "stream",
    "client_disconnected", "prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms", "created_at",
    "customer_id", "redactions", "prompt_sha256", "reply_sha256",
)
_REDACTIONS = _COLUMNS.index("redactions")


def _to_values(event: contract.UsageEvent) -> tuple:
    """One event as a row, in ``_COLUMNS`` order (raises on a malformed event)."""
    return (
        event.request_id,
        str(event.tenant),
        event.key_id or "",
        event.endpoint or "",
        (event.model or "")[:200],
        (event.backend or "")[:100],
        int(event.status),
        (event.error_code or "")[:64],
        bool(event.stream),
        bool(event.client_disconnected),
        int(event.prompt_tokens or 0),
        int(event.completion_tokens or 0),
        event.ttft_ms,
        float(event.duration_ms or 0),
        datetime.fromtimestamp(event.created, tz=UTC),
        event.customer_id or "",  # validated by the contract's decode
        _redaction_counts(event.redactions),
        event.prompt_sha256 or "",
        event.reply_sha256 or "",
    )


def _redaction_counts(value: object) -> dict[str, int] | None:
    """Counts per identifier type (bounded: type names are the redactor's own short labels); None: off."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError("redactions is not a mapping")
    return {str(kind)[:32]: int(count) for kind, count in list(value.items())[:64]}


def _store(rows: list[tuple]) -> int:
    """Insert rows, skipping request ids already stored and events of unknown tenants; returns rows stored."""
    if not rows:
        return 0
    if connection.vendor == "postgresql":
        return _store_postgres(rows)
    tenant_ids = {row[1] for row in rows}
    known = {str(pk) for pk in Tenant.objects.filter(pk__in=tenant_ids).values_list("pk", flat=True)}
    objects = [UsageEvent(**dict(zip(_COLUMNS, row, strict=True))) for row in rows if row[1] in known]
    UsageEvent.objects.bulk_create(objects, ignore_conflicts=True, batch_size=1000)
    return len(objects)


def _store_postgres(rows: list[tuple]) -> int:
    """COPY into a temporary table, then one INSERT … ON CONFLICT DO NOTHING joined to the tenants: several
    times faster than batched INSERTs, and still idempotent on request_id."""
    columns = ", ".join(_COLUMNS)
    table = UsageEvent._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock_shared(%s)", [USAGE_COMMIT_LOCK])  # first: before any id
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS usage_incoming ON COMMIT DELETE ROWS AS "  # noqa: S608 (constants)
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        with cursor.cursor.copy(f"COPY usage_incoming ({columns}) FROM STDIN") as copy:
            for row in rows:
                if row[_REDACTIONS] is not None:
                    row = (*row[:_REDACTIONS], Jsonb(row[_REDACTIONS]), *row[_REDACTIONS + 1:])
                copy.write_row(row)
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {', '.join('i.' + c for c in _COLUMNS)} "  # noqa: S608
            f"FROM usage_incoming i JOIN {Tenant._meta.db_table} t ON t.id = i.tenant_id "
            "ON CONFLICT (request_id) DO NOTHING"
        )
        return cursor.rowcount


def usage_ingest(*, max_batches: int | None = None, block_ms: int | None = None) -> int:
    """Move usage events from the Redis stream into the database. Returns how many entries were handled.

    Entries are acknowledged (and deleted from the stream) only after the database commit. Entries this
    consumer read but could not store (the database was down) are retried first; entries a dead consumer
    held are taken over after a minute; the unique ``request_id`` makes any second insert a no-op.
    """
    reader = GroupReader(get_redis(), settings.INFERENCE_USAGE_STREAM, INGEST_GROUP)
    reader.ensure_group()
    handled = 0
    for pending in reader.batches(count=settings.USAGE_INGEST_BATCH, claim_idle_ms=settings.USAGE_INGEST_CLAIM_IDLE_MS,
                                  block_ms=block_ms, max_batches=max_batches):
        rows = []
        for _entry_id, fields in pending:
            if not fields:
                continue  # already deleted from the stream: only its acknowledgement was missing
            for line in fields.get(b"e", b"").split(b"\n"):  # an entry carries one or more events
                try:
                    rows.append(_to_values(contract.UsageEvent.decode(line)))
                except (KeyError, ValueError, TypeError) as exc:
                    # A malformed event can't be billed; keep it out of the table but say so loudly.
                    logger.error("dropping malformed usage event: %s", exc.__class__.__name__)
        _store(rows)
        ids = [entry_id for entry_id, _ in pending]
        reader.ack(ids)  # only now: the rows are committed
        handled += len(ids)
    return handled


def usage_ingest_loop(*, stop, idle_sleep: float = 0.2) -> None:
    """Drain the usage stream until ``stop`` (a threading.Event) is set, then drain once more."""
    from django.db import close_old_connections

    while not stop.is_set():
        try:
            handled = usage_ingest(max_batches=50)
        except Exception:
            logger.exception("usage ingest failed; retrying")
            handled = 0
        finally:
            close_old_connections()
        if not handled:
            stop.wait(idle_sleep)
    try:
        usage_ingest()
    finally:
        close_old_connections()


def prices_publish() -> dict[str, tuple[float, float]]:
    """Publish the prices the data plane counts spend with, in micro-AUD per token (input, output): the platform's,
    and each plan's own prices as that plan's price list (tenant records name theirs). Returns the platform's."""
    book = pricing.PriceBook.load()
    prices = _floats(book.default)
    lists = {pricing.price_list_name(plan_id): _floats(own) for plan_id, own in book.own.items()}
    get_redis().set(contract.prices_key(), contract.encode_prices(prices, lists))
    return prices


def _floats(prices: dict[str, pricing.Price]) -> dict[str, tuple[float, float]]:
    return {model: (float(price.input), float(price.output)) for model, price in prices.items()}


# --- Plans, prices and tenant quotas (staff) ---------------------------------------------------------------
def _republish_tenant(tenant) -> None:
    from billing import snapshot

    snapshot.publish_tenant(tenant)


def _republish_plan(plan_id: int) -> None:
    """The records of the tenants on the plan, by a worker (a plan can carry thousands of tenants)."""
    from billing.tasks import publish_plan_tenants

    publish_plan_tenants.delay(plan_id)


@transaction.atomic
def tenant_quota_set(*, tenant: Tenant, actor: AbstractBaseUser | None = None, request: HttpRequest | None = None,
                     plan: Plan | object | None = _UNCHANGED, **limits: int | Decimal | None) -> TenantQuota:
    """Set a tenant's plan and/or limit overrides (None clears an override). Audited; live within a second."""
    quotas.check_fields(limits)
    quota, _created = TenantQuota.objects.select_for_update().get_or_create(tenant=tenant)
    before = {name: quotas.recorded(getattr(quota, name)) for name in LIMIT_FIELDS}
    before["plan"] = quota.plan.slug if quota.plan else None
    if plan is not _UNCHANGED:
        quota.plan = plan
    for name, value in limits.items():
        setattr(quota, name, value)
    quota.updated_by = actor
    quota.save()
    after = {name: quotas.recorded(getattr(quota, name)) for name in LIMIT_FIELDS}
    after["plan"] = quota.plan.slug if quota.plan else None
    record(action="tenant.limits.update", actor=actor, tenant=tenant, target=quota, request=request,
           data={"before": before, "after": after})
    transaction.on_commit(lambda: _republish_tenant(tenant), robust=True)  # a failure: snapshot.reconcile heals it
    return quota


@transaction.atomic
def plan_save(*, plan: Plan, actor: AbstractBaseUser | None = None, request: HttpRequest | None = None) -> Plan:
    """Create or change a plan; every tenant on it gets the new limits within a second.

    The default plan stays the default until another plan takes its place: tenants without a plan of their own
    (every new one) are on it, and without one they would have no limit at all."""
    created = plan.pk is None
    if not plan.is_default and not created and Plan.objects.filter(pk=plan.pk, is_default=True).exists():
        raise ValidationError({"is_default": "This is the default plan: make another plan the default instead."})
    if plan.is_default:
        Plan.objects.exclude(pk=plan.pk).filter(is_default=True).update(is_default=False)
    plan.save()
    record(action="plan.create" if created else "plan.update", actor=actor, target=plan, request=request,
           data={"slug": plan.slug, **{name: quotas.recorded(getattr(plan, name)) for name in LIMIT_FIELDS},
                 "monthly_fee_aud": str(plan.monthly_fee_aud), "included_tokens": plan.included_tokens,
                 "trial_days": plan.trial_days, "trial_card_required": plan.trial_card_required,
                 "self_serve": plan.self_serve, "requires_payment": plan.requires_payment})
    transaction.on_commit(lambda: _republish_plan(plan.pk), robust=True)  # a failure: the reconciliation heals it
    _stripe_resync([plan.pk])
    return plan


@transaction.atomic
def model_price_set(*, model: str, input_per_1k_aud: Decimal, output_per_1k_aud: Decimal,
                    actor: AbstractBaseUser | None = None, request: HttpRequest | None = None) -> ModelPrice:
    price, _ = ModelPrice.objects.update_or_create(
        model=model, defaults={"input_per_1k_aud": input_per_1k_aud, "output_per_1k_aud": output_per_1k_aud}
    )
    record(action="price.update", actor=actor, target=price, request=request,
           data={"model": model, "input_per_1k_aud": str(input_per_1k_aud),
                 "output_per_1k_aud": str(output_per_1k_aud)})
    transaction.on_commit(prices_publish, robust=True)  # a failed publish is repaired by the periodic job
    _stripe_resync(None)  # every plan in Stripe charges this model's tokens
    return price


def _plan_prices_changed(plan: Plan) -> None:
    """After a plan's own prices change: the data plane's prices (its spend caps), the plan's Stripe prices, and
    the records of its tenants (records published before they named a price list read as the platform prices).
    Touching the plan makes the snapshot reconciliation republish those records should the queued job fail."""
    Plan.objects.filter(pk=plan.pk).update(updated_at=timezone.now())
    transaction.on_commit(prices_publish, robust=True)  # a failed publish is repaired by the periodic job
    transaction.on_commit(lambda: _republish_plan(plan.pk), robust=True)
    _stripe_resync([plan.pk])


def _price_data(price: PlanModelPrice | None) -> dict | None:
    if price is None:
        return None
    return {"input_per_1m_aud": str(price.input_per_1m_aud), "output_per_1m_aud": str(price.output_per_1m_aud)}


@transaction.atomic
def plan_model_price_set(*, plan: Plan, model: str, input_per_1m_aud: Decimal, output_per_1m_aud: Decimal,
                         actor: AbstractBaseUser | None = None, request: HttpRequest | None = None) -> PlanModelPrice:
    """Set the plan's own price for a model (A$ per million tokens), over the platform's for tenants on the plan.

    Only a model on the platform's price list: that list is what every plan falls back to, and what Stripe's
    meters and the console list models by. Audited; the spend caps of the plan's tenants count it within a second,
    and the plan's Stripe prices follow."""
    if not ModelPrice.objects.filter(model=model).exists():
        raise ValidationError({"model": "That model has no platform price: set one under Model prices first."})
    for name, value in (("input_per_1m_aud", input_per_1m_aud), ("output_per_1m_aud", output_per_1m_aud)):
        if value is None or value < 0:
            raise ValidationError({name: "A price is zero or more."})
    before = PlanModelPrice.objects.select_for_update().filter(plan=plan, model=model).first()
    before_data = _price_data(before)
    price, _created = PlanModelPrice.objects.update_or_create(
        plan=plan, model=model, defaults={"input_per_1m_aud": input_per_1m_aud, "output_per_1m_aud": output_per_1m_aud}
    )
    price.refresh_from_db(fields=["input_per_1m_aud", "output_per_1m_aud"])  # as stored (four decimals)
    record(action="plan.price.update", actor=actor, target=plan, request=request,
           data={"slug": plan.slug, "model": model, "before": before_data, "after": _price_data(price)})
    _plan_prices_changed(plan)
    return price


@transaction.atomic
def plan_model_price_remove(*, plan: Plan, model: str, actor: AbstractBaseUser | None = None,
                            request: HttpRequest | None = None) -> bool:
    """Remove the plan's own price for a model: its tenants pay the platform price again. False if it had none."""
    price = PlanModelPrice.objects.select_for_update().filter(plan=plan, model=model).first()
    if price is None:
        return False
    before = _price_data(price)
    price.delete()
    record(action="plan.price.remove", actor=actor, target=plan, request=request,
           data={"slug": plan.slug, "model": model, "before": before})
    _plan_prices_changed(plan)
    return True


def _stripe_resync(plan_ids: list[int] | None) -> None:
    """Plans billed through Stripe follow a plan or price change there too, after commit (billing.plan_sync)."""
    from billing.plan_sync import plan_sync_later

    plan_sync_later(plan_ids)

