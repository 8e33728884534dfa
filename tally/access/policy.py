"""What each route asks of its caller, in one table: the gate enforces it, the OpenAPI
document declares it, and the access-matrix test is generated from that document.

- `scopes`: the token must grant one of them; empty: the route is open (health for load
  balancers, the API document, the dashboard's page shell: nothing of any tenant's data).
- `reach`: whose data the answer holds. `tenant`: the caller's own tenant's (an operator's:
  any tenant's, or every tenant's merged: runtime.queries.tenant_read); `site`: every
  tenant's at once, unfiltered (Prometheus figures), so
  only an operator token (tenant `*`) passes; `shared`: nobody's (schemas), any tenant passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Reach = Literal["tenant", "site", "shared"]


@dataclass(frozen=True)
class Access:
    scopes: frozenset[str]
    reach: Reach = "tenant"

    @property
    def open(self) -> bool:
        return not self.scopes

    def describe(self) -> str:
        """The rule as a sentence (the OpenAPI document's operations say it)."""
        if self.open:
            return "open: no token needed"
        needs = " or ".join(f"`{scope}`" for scope in sorted(self.scopes))
        whose = {
            "tenant": "answers for the token's own tenant only (an operator's: any tenant)",
            "site": "every tenant's data at once: an operator token (tenant `*`) only",
            "shared": "any tenant",
        }[self.reach]
        return f"a bearer token with scope {needs}; {whose}"


def access(*scopes: str, reach: Reach = "tenant") -> Access:
    return Access(frozenset(scopes), reach)


OPEN = access()
READ = access("read")
#: Schema reads serve producers (`ingest`) and readers alike; schemas are nobody's data.
SCHEMA_READ = access("read", "ingest", "admin", reach="shared")
#: Registering: `admin`; an `ingest` token may "register" a schema already registered under the
#: subject (what Confluent's serializers do on their defaults: auto.register.schemas), which
#: changes nothing; the registry's view refuses it anything new.
SCHEMA_REGISTER = access("admin", "ingest", reach="shared")
ADMIN = access("admin", reach="site")
#: Acting on a queue (an alert acknowledged or resolved, a reviewed order decided): people
#: at work, not readers.
REVIEW = access("review")

#: (method, route pattern) → its access. HEAD is GET's.
ROUTES: dict[tuple[str, str], Access] = {
    ("get", "/"): OPEN,
    ("get", "/static/{name}"): OPEN,
    ("get", "/api/health"): OPEN,
    ("get", "/api/health/live"): OPEN,
    ("get", "/api/openapi.json"): OPEN,
    ("get", "/metrics"): access("metrics", reach="site"),
    ("post", "/api/ingest/{endpoint}"): access("ingest"),
    ("get", "/api/dead-letters/stats"): READ,
    ("get", "/api/sales/top"): READ,
    ("get", "/api/sales/items/{item_id}"): READ,
    ("get", "/api/stream/sales/top"): READ,
    ("get", "/api/servers/{server_id}/metrics"): READ,
    ("get", "/api/servers/{server_id}/summary"): READ,
    ("get", "/api/metrics/{metric_id}"): READ,
    ("get", "/api/stream/servers/{server_id}"): READ,
    ("get", "/api/stream/metrics/{metric_id}"): READ,
    ("get", "/api/merchants/{merchant_id}/sales"): READ,
    ("get", "/api/merchants/{merchant_id}/summary"): READ,
    ("get", "/api/merchants/{merchant_id}/top-items"): READ,
    ("get", "/api/social/alerts"): READ,
    ("post", "/api/social/alerts/{alert_id}/{action}"): REVIEW,
    ("get", "/api/social/summary"): READ,
    ("get", "/api/stream/social/summary"): READ,
    ("get", "/api/fraud/reviews"): READ,
    ("post", "/api/fraud/reviews/{order_id}/decision"): REVIEW,
    ("get", "/api/fraud/orders/{order_id}"): READ,
    ("get", "/api/fraud/models"): READ,
    ("get", "/api/fraud/audit"): READ,
    ("get", "/api/recommendations"): READ,
    ("get", "/api/recommendations/rows"): READ,
    ("get", "/api/coupons/campaigns"): READ,
    ("post", "/registry/subjects/{subject}/versions"): SCHEMA_REGISTER,
    # Lookups and compatibility checks are POSTs that write nothing.
    ("post", "/registry/subjects/{subject}"): SCHEMA_READ,
    ("post", "/registry/compatibility/subjects/{subject}/versions/{version}"): SCHEMA_READ,
    ("post", "/registry/compatibility/subjects/{subject}/versions"): SCHEMA_READ,
}
REGISTRY_PREFIX = "/registry/"


def access_of(method: str, route: str) -> Access | None:
    """The access of a route (its pattern, as registered); None for a route not listed, which
    the gate refuses to serve (a route without a rule must not be open by omission)."""
    method = "get" if method.lower() == "head" else method.lower()
    listed = ROUTES.get((method, route))
    if listed is not None or not route.startswith(REGISTRY_PREFIX):
        return listed
    return SCHEMA_READ if method == "get" else ADMIN
