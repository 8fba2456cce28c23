"""``python -m batchcorder.flight``: the same as the ``batchcorder-flight`` command."""

from ._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
