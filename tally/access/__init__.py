"""Who is asking and what they may do: signed tokens (`tokens`), the access each route needs
(`policy`) and revoked tokens followed on the broker (`revocations`). The gate every web
request passes, which applies them, is `tally.http.access`."""
