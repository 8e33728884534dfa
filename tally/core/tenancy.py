"""The tenant in the data: a tenant's series are keyed by it.

A series (a server, a metric, an item) is a tenant's: the same id in two tenants is two
series, so the tables key it as `<tenant>|<id>` (`scoped`). Partitioning stays by the bare id,
so producers key their messages as before and a query is routed as before. The metric tables'
keys start with the tenant, so a scan of one tenant's keys cannot reach another's; a sales pane
cell is `<pane>|<tenant>|<item>` (a window's slide reads a whole pane back), where a lookup is
of one scoped item. No Faust.
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
    """(tenant, id) of a `scoped` id; ("", key) for a key without a tenant."""
    tenant, _, id_ = key.rpartition(KEY_SEPARATOR)
    return tenant, id_


#: What a tenant name may be, as every refusal of one says it.
TENANT_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def not_a_tenant(given: str) -> str:
    """The reason `given` (as the caller names it: "tenant 'x'", "--tenant 'x'") is refused."""
    return f"{given} is not a tenant name: {TENANT_RULE}"


def check_tenant_name(tenant: str) -> None:
    """`ValidationError` (rule `bad_tenant`) unless a record's tenant can lead a key; empty is
    fine: a record written before records named their tenant, the default tenant's."""
    if tenant and not TENANT_PATTERN.fullmatch(tenant):
        raise ValidationError(not_a_tenant(f"tenant {shown(tenant)}"), "bad_tenant")


def tenant_of(record: Mapping[str, Any], default: str) -> str:
    """Whose a (validated) record is: the tenant it names, or `default` when it names none."""
    return str(record.get("tenant") or default)


def letter_tenant(record: Mapping[str, Any], default: str) -> str:
    """Whose a rejected record is, for its dead letter: the tenant it names (`default` when
    it names none, as `tenant_of`); "" (an operator's to see) when it names no usable one."""
    named = record.get("tenant") or default
    return named if isinstance(named, str) and TENANT_PATTERN.fullmatch(named) else ""
