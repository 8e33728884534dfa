"""Who is asking and what they may do: signed tokens (`tokens`), the access each route needs
(`policy`), revoked tokens followed on the broker (`revocations`) and the gate every web
request passes (`gate`)."""
