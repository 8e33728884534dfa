"""The merchants pipeline: every merchant's (tenant's) own sales, hour by hour, and its top
items over the sales window, from purchases re-keyed so that a merchant's whole history is
one partition."""
