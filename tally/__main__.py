"""`tally` / `python -m tally`: the Faust app's CLI with Tally's commands added."""

from __future__ import annotations


def main() -> None:
    import tally.cli  # noqa: F401  (registers broker, dev, feed)
    from tally.app import app

    app.main()


if __name__ == "__main__":
    main()
