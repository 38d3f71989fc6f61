#!/usr/bin/env python3
"""Print hyperfine --export-json results side by side: median, mean, min, max (ms) and runs.

Usage: hf_table.py TITLE FILE.json [FILE.json ...]
"""
import json
import statistics
import sys


def main() -> None:
    title, files = sys.argv[1], sys.argv[2:]
    rows = []
    for f in files:
        try:
            with open(f) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as e:
            rows.append((f, None, str(e)))
            continue
        for r in data["results"]:
            rows.append((r["command"], r["times"], None))
    width = max([len(r[0]) for r in rows] + [10])
    print(f"\n== {title}")
    print(f"{'case':<{width}}  {'median ms':>10}  {'mean ms':>9}  {'min ms':>8}  {'max ms':>8}  {'runs':>4}")
    print("-" * (width + 50))
    for name, times, err in rows:
        if times is None:
            print(f"{name:<{width}}  FAILED: {err}")
            continue
        ms = [t * 1000 for t in times]
        print(
            f"{name:<{width}}  {statistics.median(ms):>10.1f}  {statistics.mean(ms):>9.1f}  "
            f"{min(ms):>8.1f}  {max(ms):>8.1f}  {len(ms):>4}"
        )


if __name__ == "__main__":
    main()
