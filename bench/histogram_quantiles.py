#!/usr/bin/env python3
"""Percentiles of one Prometheus histogram between two scrapes of /metrics.

usage: histogram_quantiles.py METRIC BEFORE_FILE AFTER_FILE
prints: p50_ms p99_ms count  (linear interpolation inside a bucket, as histogram_quantile does)
"""
import re
import sys

metric, before_path, after_path = sys.argv[1:4]
pattern = re.compile(r'^' + re.escape(metric) + r'_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+(\S+)')


def buckets(path):
    out = {}
    with open(path) as f:
        for line in f:
            m = pattern.match(line)
            if m:
                le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
                out[le] = out.get(le, 0.0) + float(m.group(2))
    return out


before, after = buckets(before_path), buckets(after_path)
bounds = sorted(after)
cumulative = [after[b] - before.get(b, 0.0) for b in bounds]
total = cumulative[-1] if cumulative else 0.0


def quantile(q):
    if total <= 0:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative):
        if count >= rank:
            if bound == float("inf"):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


print(f"{quantile(0.5) * 1000:.1f} {quantile(0.99) * 1000:.1f} {int(total)}")
