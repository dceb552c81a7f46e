#!/usr/bin/env python3
"""Print the median of every criterion benchmark under target/criterion as a Markdown table.

Usage: python3 scripts/criterion_medians.py [GROUP ...]
Reads target/criterion/<group>/<bench>/new/estimates.json (written by `cargo bench`) and
benchmark.json for the full id. Medians, with the 95 % confidence interval of the median.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent / "target" / "criterion"


def fmt(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.3g} {unit}"
    return f"{ns:.3g} ns"


def main() -> int:
    groups = set(sys.argv[1:])
    rows = []
    for est in sorted(ROOT.glob("*/*/new/estimates.json")):
        bench_dir = est.parent
        meta = json.loads((bench_dir / "benchmark.json").read_text())
        group = meta.get("group_id", est.parts[-4])
        if groups and group not in groups:
            continue
        m = json.loads(est.read_text())["median"]
        ci = m["confidence_interval"]
        rows.append((group, meta.get("function_id") or meta.get("full_id"), m["point_estimate"],
                     ci["lower_bound"], ci["upper_bound"]))
    if not rows:
        print("no criterion results found; run `cargo bench` first", file=sys.stderr)
        return 1
    print("| group | benchmark | median | 95 % CI of median |")
    print("|---|---|---|---|")
    for g, f, med, lo, hi in rows:
        print(f"| {g} | {f} | {fmt(med)} | {fmt(lo)} – {fmt(hi)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
