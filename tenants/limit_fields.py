"""The limit fields plans, tenant overrides and API keys share, one per kind of ``core.quotas.KINDS``.

Here rather than in billing because billing builds on tenants (its plans and overrides point at ``Tenant``) and
API keys carry limits of their own: tenants imports nothing from billing.
"""

from __future__ import annotations

from django.db import models

from core.quotas import KINDS, LimitKind


def limit_field(kind: LimitKind) -> models.Field:
    """Empty means "no limit" on a plan and "the plan (or the organisation) decides" on an override or a key."""
    if kind.money:
        return models.DecimalField(kind.verbose_name, max_digits=12, decimal_places=2, null=True, blank=True)
    field_class = models.PositiveBigIntegerField if kind.big else models.PositiveIntegerField
    return field_class(kind.verbose_name, null=True, blank=True)


class LimitFields(models.Model):
    """The kinds of limit as model fields (added from the table below)."""

    class Meta:
        abstract = True


for _kind in KINDS:
    LimitFields.add_to_class(_kind.field, limit_field(_kind))
