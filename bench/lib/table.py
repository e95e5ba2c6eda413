#!/usr/bin/env python3
"""Prints benchmark rows as an aligned table.

Reads tab-separated rows from stdin:
    scenario, figure, value, reference, ratio, target, result
(the format `bench_row` in common.sh writes). Stdlib only.
"""
import sys

HEAD = ["scenario", "figure", "value", "reference", "ratio", "target", "result"]


def main() -> int:
    rows = [line.rstrip("\n").split("\t") for line in sys.stdin if line.strip()]
    rows = [r + [""] * (len(HEAD) - len(r)) for r in rows]
    if "--no-scenario" in sys.argv:
        head, rows = HEAD[1:], [r[1:] for r in rows]
    else:
        head = HEAD
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    def fmt(r):
        return "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    print(fmt(head))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
