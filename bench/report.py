#!/usr/bin/env python3
"""Turns bench/run's CSVs into markdown tables and gnuplot PNGs.

    bench/report.py RESULTS_DIR [MICRO_JSON]

host-9p: each workload, fsd against diod (the baseline) with the ratio, and
every throughput row as a fraction of the host's pread limit at the same
request size.
"""
import csv
import os
import subprocess
import sys
from collections import defaultdict


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fmt(v, unit):
    v = float(v)
    if unit == "MiB/s":
        return f"{v:,.0f}"
    return f"{v:,.0f}"


def cell(r):
    return f"{fmt(r['median'], r['unit'])} ({fmt(r['min'], r['unit'])}–{fmt(r['max'], r['unit'])})"


def host_9p(out):
    rows = read_rows(os.path.join(out, "host-9p.csv"))
    limit = {int(r["msize"]): float(r["median"]) for r in rows if r["layer"] == "limit" and r["workload"] == "pread"}
    memcpy = next((float(r["median"]) for r in rows if r["workload"] == "memcpy"), None)
    by = defaultdict(dict)  # (workload base, msize, conns) -> server -> row
    order = []
    for r in rows:
        if r["layer"] != "host-9p":
            continue
        base = r["workload"].split("(")[0]
        key = (base, int(r["msize"]), int(r["conns"]))
        if key not in by:
            order.append(key)
        by[key][r["server"]] = r
    lines = [
        "| workload | msize | conns | fsd | diod | fsd/diod | fsd / pread limit |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in order:
        base, msize, conns = key
        f, d = by[key].get("fsd"), by[key].get("diod")
        unit = (f or d)["unit"]
        ratio = f"{float(f['median']) / float(d['median']):.2f}×" if f and d and float(d["median"]) > 0 else "–"
        frac = "–"
        if f and unit == "MiB/s" and msize in limit:
            frac = f"{float(f['median']) / limit[msize]:.0%}"
        dcell = cell(d) if d else "–"
        if d and "(" in d["workload"]:
            dcell += " *"
        lines.append(f"| {base} ({unit}) | {msize // 1024}K | {conns} | {cell(f) if f else '–'} | {dcell} | {ratio} | {frac} |")
    notes = ["", "Median (min–max) of 3 runs. * diod agreed to a smaller msize than asked (64 KiB)."]
    if limit:
        notes.append("pread limit (same file from page cache, one thread, MiB/s): " +
                     ", ".join(f"{k // 1024}K {v:,.0f}" for k, v in sorted(limit.items())) +
                     (f"; memcpy {memcpy:,.0f} MiB/s." if memcpy else "."))
    md = "\n".join(lines + notes) + "\n"
    with open(os.path.join(out, "host-9p.md"), "w") as f:
        f.write(md)
    print(md)

    # Plot: sequential read vs msize, per server and connection count, with the limit.
    dat = os.path.join(out, "host-9p-seqread.dat")
    series = []
    with open(dat, "w") as f:
        for server in ("fsd", "diod"):
            for conns in (1, 8):
                pts = sorted((k[1], float(v[server]["median"])) for k, v in by.items()
                             if k[0] == "seqread" and k[2] == conns and server in v)
                if pts:
                    f.write(f"# {server} {conns}\n" + "".join(f"{m} {v}\n" for m, v in pts) + "\n\n")
                    series.append(f"{server}, {conns} conn{'s' if conns > 1 else ''}")
        if limit:
            f.write("# limit\n" + "".join(f"{m} {v}\n" for m, v in sorted(limit.items())) + "\n\n")
            series.append("pread limit")
    plots = ", ".join(f"'{dat}' index {i} with linespoints lw 2 title '{t}'" for i, t in enumerate(series))
    gnuplot(out, "host-9p-seqread.png", f"""
set title '9p sequential read (host harness, unix socket)'
set xlabel 'msize'; set ylabel 'MiB/s'; set logscale x 2; set format x '%.0b %BB'; set key left top; set grid
plot {plots}
""")

    # Plot: fsd/diod ratio per workload.
    rat = os.path.join(out, "host-9p-ratios.dat")
    with open(rat, "w") as f:
        for key in order:
            v = by[key]
            if "fsd" in v and "diod" in v and float(v["diod"]["median"]) > 0 and (key[0] != "seqread" or key[1] == 1048576):
                label = f"{key[0]} c{key[2]}"
                f.write(f'"{label}" {float(v["fsd"]["median"]) / float(v["diod"]["median"]):.3f}\n')
    gnuplot(out, "host-9p-ratios.png", f"""
set title 'fsd / diod (host harness; seqread at msize 1 MiB)'
set style data histograms; set style fill solid 0.7; set boxwidth 0.8
set ylabel 'ratio (>1: fsd faster)'; set yrange [0:*]; set grid ytics; set xtics rotate by -30
plot '{rat}' using 2:xtic(1) notitle, 1 with lines lw 2 dt 2 title 'parity'
""")


def gnuplot(out, png, script):
    path = os.path.join(out, png)
    subprocess.run(["gnuplot"], input=f"set terminal pngcairo size 900,540 font ',10'\nset output '{path}'\n{script}",
                   text=True, check=False)


def micro(out, json_path):
    """Google Benchmark's JSON (3 repetitions, aggregates) -> micro.csv and micro.md."""
    import json
    with open(json_path) as f:
        runs = json.load(f)["benchmarks"]
    agg = defaultdict(dict)
    for b in runs:
        if b.get("run_type") == "aggregate":
            agg[b["run_name"]][b["aggregate_name"]] = b
    with open(os.path.join(out, "micro.csv"), "w") as f:
        f.write("benchmark,median_ns,stddev_ns,items_per_second\n")
        lines = ["| benchmark | median | stddev | items/s |", "|---|---:|---:|---:|"]
        for name, a in agg.items():
            med, sd = a["median"], a.get("stddev", {})
            scale = {"ns": 1, "us": 1e3, "ms": 1e6}[med.get("time_unit", "ns")]
            ips = med.get("items_per_second", "")
            f.write(f"{name},{med['cpu_time'] * scale:.1f},{sd.get('cpu_time', 0) * scale:.1f},{ips}\n")
            lines.append(f"| {name} | {med['cpu_time'] * scale:,.1f} ns | {sd.get('cpu_time', 0) * scale:,.1f} ns | "
                         f"{(f'{ips / 1e6:,.0f} M' if ips else '–')} |")
    md = "\n".join(lines) + "\n\nCPU time per iteration, median of 3 repetitions.\n"
    with open(os.path.join(out, "micro.md"), "w") as f:
        f.write(md)
    print(md)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
        micro(out, sys.argv[2])
    if os.path.exists(os.path.join(out, "host-9p.csv")):
        host_9p(out)


if __name__ == "__main__":
    main()
