"""Tally's own commands, beside Faust's (`tally worker`, `tally send`, `tally tables`, ...).

Each runs under Faust's command runner: Ctrl-C or SIGTERM cancels it and its `finally` cleans
up. Importing this package registers them all.
"""

from tally.cli import archive, coupons, dlq, fraud, ingest, local, replay, tokens

__all__ = ["archive", "coupons", "dlq", "fraud", "ingest", "local", "replay", "tokens"]
