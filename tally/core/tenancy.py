"""The tenant in the data: every tenant's key in every table starts with it.

A series (a server, a metric, an item) is a tenant's: the same id in two tenants is two
series, so the tables key it as `<tenant>|<id>` (`scoped`). Partitioning stays by the bare id,
so producers key their messages as before and a query is routed as before; the tenant then
leads the key inside the partition, so a scan of one tenant's keys cannot reach another's.
No Faust.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tally.core.errors import ValidationError
from tally.core.limits import KEY_SEPARATOR, TENANT_PATTERN, shown


def scoped(tenant: str, id_: str) -> str:
    """A tenant's series id as table keys and internal messages carry it."""
    return f"{tenant}{KEY_SEPARATOR}{id_}"


def unscoped(key: str) -> tuple[str, str]:
    """(tenant, id) of a `scoped` id."""
    tenant, _, id_ = key.partition(KEY_SEPARATOR)
    return tenant, id_


def check_tenant_name(tenant: str) -> None:
    """`ValidationError` (rule `bad_tenant`) unless a record's tenant can lead a key; empty is
    fine: a record written before records named their tenant, the default tenant's."""
    if tenant and not TENANT_PATTERN.fullmatch(tenant):
        raise ValidationError(
            f"tenant {shown(tenant)} is not a tenant name: 1 to 64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit",
            "bad_tenant",
        )


def tenant_of(record: Mapping[str, Any], default: str) -> str:
    """Whose a (validated) record is: the tenant it names, or `default` when it names none."""
    return str(record.get("tenant") or default)


def letter_tenant(record: Mapping[str, Any]) -> str:
    """Whose a rejected record is, for its dead letter: the tenant it names if that can be a
    tenant; "" (an operator's to see) when it names none or no usable one."""
    named = record.get("tenant")
    return named if isinstance(named, str) and TENANT_PATTERN.fullmatch(named) else ""
