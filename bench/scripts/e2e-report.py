#!/usr/bin/env python3
"""Markdown report for one e2e.sh run: mosaic against tgt and istgt.

usage: e2e-report.py OUTDIR      (reads OUTDIR/bench.tsv, machine.txt, load.tsv)

bench.tsv is written by ../shared/peers/bench-lib.sh's `measure`: one line per run with
IOPS, MB/s, latency, wall seconds and the target's CPU (utime+stime of the whole process,
all threads, over the wall time, in % of one core).

Target CPU time per I/O = target CPU seconds / I/Os done while it was measured.
The I/Os done are IOPS x the time the client was moving data: RUNTIME + RAMP for fio
(fio reports IOPS over RUNTIME only, but it keeps the same queue full during RAMP) and
RUNTIME for iscsi-perf. Logins and teardown are charged to the I/Os: they are a few
milliseconds in a run of many seconds.
"""
import csv
import os
import re
import sys
from collections import OrderedDict

out = sys.argv[1]
rows = list(csv.DictReader(open(os.path.join(out, "bench.tsv")), delimiter="\t"))
machine = open(os.path.join(out, "machine.txt")).read()
m = re.search(r"RUNTIME=(\d+) RAMP=(\d+)", machine)
runtime, ramp = (float(m.group(1)), float(m.group(2))) if m else (None, None)
loads = []
try:
    for line in open(os.path.join(out, "load.tsv")):
        loads.append(line.rstrip("\n").split("\t")[4])
except FileNotFoundError:
    pass
if len(loads) != len(rows):
    loads = ["-"] * len(rows)

PEERS = ["tgt", "istgt"]
# every key may have been measured in several rounds: keep them all, report the median
runs = OrderedDict()
seen = {}
for i, r in enumerate(rows):
    k = (r["target"], r["client"], r["workload"], r["jobs"])
    seen[k] = seen.get(k, 0) + 1
    r["round"] = seen[k]
    r["load"] = loads[i]
    runs.setdefault(k, []).append(r)
keys = OrderedDict()
for (t, c, w, j) in runs:
    keys[(c, w, j)] = None


def num(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def cpu_us_per_io(r):
    iops, tcpu, wall = num(r["iops"]), num(r["target_cpu_pct"]), num(r["wall_s"])
    if not iops or tcpu is None or not wall:
        return None
    active = (runtime + ramp if r["client"].startswith("fio") else runtime) if runtime else wall
    cpu_s = tcpu / 100 * wall
    return cpu_s / (iops * active) * 1e6


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


class Agg:
    """The median over the rounds of one (target, client, workload, jobs)."""

    def __init__(self, rs):
        ok = [r for r in rs if not r["note"].startswith("rc=")] or rs
        self.failed = len(ok) < len(rs) or any(r["note"].startswith("rc=") for r in ok)
        self.n = len(ok)
        self.iops = median(num(r["iops"]) for r in ok)
        self.mbps = median(num(r["MBps"]) for r in ok)
        self.lat = median(num(r["lat_avg_us"]) for r in ok)
        self.cpu = median(cpu_us_per_io(r) for r in ok)


def fmt(v, nd=0):
    return "-" if v is None else f"{v:,.{nd}f}"


def ratio(a, b, invert=False):
    if a is None or b is None or a == 0 or b == 0:
        return "-"
    x = b / a if invert else a / b
    return f"**{x:.2f}**" if x < 1 else f"{x:.2f}"


def get(t, k):
    rs = runs.get((t,) + k)
    return Agg(rs) if rs else None


nrounds = max((len(v) for v in runs.values()), default=1)
if nrounds > 1:
    print(f"Median of {nrounds} rounds (the mean of two).\n")
print("| client | workload | jobs | IOPS mosaic | IOPS tgt | IOPS istgt | mosaic/tgt | mosaic/istgt "
      "| MB/s mosaic | lat avg µs mosaic / tgt / istgt "
      "| target CPU µs/IO mosaic / tgt / istgt | CPU/IO tgt÷mosaic | CPU/IO istgt÷mosaic |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for k in keys:
    c, w, j = k
    a = {t: get(t, k) for t in ("mosaic", "tgt", "istgt")}
    iops = {t: (x.iops if x else None) for t, x in a.items()}
    cpu = {t: (x.cpu if x else None) for t, x in a.items()}
    lat = " / ".join(fmt(x.lat if x else None) for x in a.values())
    mark = " (a run failed)" if any(x and x.failed for x in a.values()) else ""
    print(f"| {c} | {w}{mark} | {j} | {fmt(iops['mosaic'])} | {fmt(iops['tgt'])} | {fmt(iops['istgt'])} "
          f"| {ratio(iops['mosaic'], iops['tgt'])} | {ratio(iops['mosaic'], iops['istgt'])} "
          f"| {fmt(a['mosaic'].mbps if a['mosaic'] else None, 1)} | {lat} "
          f"| {fmt(cpu['mosaic'], 1)} / {fmt(cpu['tgt'], 1)} / {fmt(cpu['istgt'], 1)} "
          f"| {ratio(cpu['mosaic'], cpu['tgt'], invert=True)} | {ratio(cpu['mosaic'], cpu['istgt'], invert=True)} |")
print()
print("Ratios above 1 favour mosaic (more IOPS; less target CPU per I/O); **bold** = mosaic behind.")
print("MB/s = 10^6 B/s. Latency = fio's mean submission+completion latency (iscsi-perf reports none).")
print()
print("Every run (CPU in % of one core; `busy` = whole machine, 200% = both cores; load = 1/5/15-min load average before the run):")
print()
print("| target | round | client | workload | jobs | IOPS | MB/s | lat avg µs | lat p99 µs | target CPU % | client CPU % | busy % | CPU µs/IO | load | note |")
print("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
for r in rows:
    t, c, w, j = r["target"], r["client"], r["workload"], r["jobs"]
    print(f"| {t} | {r['round']} | {c} | {w} | {j} | {fmt(num(r['iops']))} | {fmt(num(r['MBps']), 1)} "
          f"| {fmt(num(r['lat_avg_us']))} | {fmt(num(r['lat_p99_us']))} | {fmt(num(r['target_cpu_pct']))} "
          f"| {fmt(num(r['client_cpu_pct']))} | {fmt(num(r['machine_busy_pct']))} | {fmt(cpu_us_per_io(r), 1)} "
          f"| {r['load']} | {r['note']} |")
print()
print("```")
print(machine.rstrip())
print("```")
