"""``python -m bench {engine,widget,email,workers} [options]``: run a benchmark and print its figures."""

from __future__ import annotations

import sys

from bench import email, engine, widget, workers

BENCHMARKS = {"engine": engine.main, "widget": widget.main, "email": email.main, "workers": workers.main}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHMARKS:
        print(f"usage: python -m bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        sys.exit(2)
    BENCHMARKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
