#!/usr/bin/env python3
"""Turns bench/run's CSVs into markdown tables and gnuplot PNGs.

    bench/report.py RESULTS_DIR [MICRO_JSON]

host-9p: each workload, fsd against diod (the baseline) with the ratio, and
every throughput row as a fraction of the host's pread limit at the same
request size and parallelism (limit.csv).
host-virtiofs: the same against the C virtiofsd and the Rust virtiofsd, per cache mode.
guest: one row per sharing configuration, one column per workload, and the
speed-ups of fsd's virtio-fs over the C virtiofsd and QEMU's 9p.
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


def load_limit(out, kind="pread"):
    """pread MiB/s by (request size, threads), and memcpy MiB/s, from limit.csv.
    kind "pread" reads into buffers that stay in the CPU's caches, as a 9P
    client's and server's do; "pread-spread" into memory spread over 256 MiB,
    as guest memory is (the virtio-fs rows; "pread" when a run lacks it)."""
    path = os.path.join(out, "limit.csv")
    rows = read_rows(path) if os.path.exists(path) else []
    if kind != "pread" and not any(r["workload"] == kind for r in rows):
        kind = "pread"
    limit = {(int(r["msize"]), int(r["conns"])): float(r["median"]) for r in rows if r["workload"] == kind}
    memcpy = next((float(r["median"]) for r in rows if r["workload"] == "memcpy"), None)
    return limit, memcpy


def limit_at(limit, size, parallel):
    """The pread limit for a row with `parallel` requests in flight (or
    connections): measured with as many threads, else with one."""
    return limit.get((size, parallel), limit.get((size, 1)))


def limit_note(limit, memcpy, where="into buffers that stay in the CPU's caches"):
    if not limit:
        return []
    notes = []
    for threads in sorted({t for _, t in limit}):
        notes.append(f"pread limit (same file from page cache {where}, {threads} thread{'s' if threads > 1 else ''}, "
                     "MiB/s): " +
                     ", ".join(f"{k // 1024}K {v:,.0f}" for (k, t), v in sorted(limit.items()) if t == threads) + ".")
    notes.append("Each row's fraction of the limit uses the limit at its own parallelism (requests in flight or "
                 "connections)." + (f" memcpy {memcpy:,.0f} MiB/s." if memcpy else ""))
    return notes


def ratio_histogram(out, png, title, dat, columns):
    """A clustered histogram of ratios: dat has a label then one column per series."""
    plots = ", ".join(f"'{dat}' using {i + 2}{':xtic(1)' if i == 0 else ''} title '{t}'" for i, t in enumerate(columns))
    gnuplot(out, png, f"""
set title '{title}'
set style data histograms; set style histogram clustered gap 1; set style fill solid 0.7; set boxwidth 0.9
set ylabel 'ratio (>1: fsd faster)'; set yrange [0:*]; set grid ytics; set xtics rotate by -30; set key left top
plot {plots}, 1 with lines lw 2 dt 2 title 'parity'
""")


def write_md(out, name, lines):
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, name), "w") as f:
        f.write(md)
    print(md)


def group(rows):
    """(workload without its "(...)" note, msize, conns) -> server -> row; and the keys in order."""
    by, order = defaultdict(dict), []
    for r in rows:
        key = (r["workload"].split("(")[0], int(r["msize"]), int(r["conns"]))
        if key not in by:
            order.append(key)
        by[key][r["server"]] = r
    return by, order


def host_9p(out):
    rows = read_rows(os.path.join(out, "host-9p.csv"))
    limit, memcpy = load_limit(out)
    by, order = group(r for r in rows if r["layer"] == "host-9p")
    lines = [
        "| workload | msize | conns | fsd | diod | fsd/diod | fsd / pread limit | fsd over vsock | vsock/diod |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key in order:
        base, msize, conns = key
        f, d, v = by[key].get("fsd"), by[key].get("diod"), by[key].get("fsd-vsock")
        unit = (f or d or v)["unit"]
        ratio = f"{float(f['median']) / float(d['median']):.2f}×" if f and d and float(d["median"]) > 0 else "–"
        frac = "–"
        lim = limit_at(limit, msize, conns)
        if f and unit == "MiB/s" and lim:
            frac = f"{float(f['median']) / lim:.0%}"
        dcell = cell(d) if d else "–"
        if d and "(" in d["workload"]:
            dcell += " *"
        vratio = f"{float(v['median']) / float(d['median']):.2f}×" if v and d and float(d["median"]) > 0 else "–"
        if v and unit == "MiB/s" and limit_at(limit, msize, 1):
            vratio = f"{float(v['median']) / limit_at(limit, msize, 1):.0%} of pread"
        lines.append(f"| {base} ({unit}) | {msize // 1024}K | {conns} | {cell(f) if f else '–'} | {dcell} | {ratio} | {frac} "
                     f"| {cell(v) if v else '–'} | {vratio} |")
    notes = ["", "Median (min–max) of 3 runs. * diod agreed to a smaller msize than asked (64 KiB).",
             "fsd over vsock: 9P on one connection of fsd's virtio-vsock device, driven in one thread by the project's "
             "vhost-user front-end and guest driver (4 KiB receive buffers and a 256 KiB window, as Linux 6.1 gives "
             "them); for seqread its last column is the share of one-thread pread at that size."]
    notes += limit_note(limit, memcpy)
    write_md(out, "host-9p.md", lines + notes)

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
        for threads in sorted({t for _, t in limit}):
            f.write(f"# limit {threads}\n" + "".join(f"{m} {v}\n" for (m, t), v in sorted(limit.items()) if t == threads) + "\n\n")
            series.append(f"pread limit, {threads} thread{'s' if threads > 1 else ''}")
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
                f.write(f'"{key[0]} c{key[2]}" {float(v["fsd"]["median"]) / float(v["diod"]["median"]):.3f}\n')
    ratio_histogram(out, "host-9p-ratios.png", "fsd / diod (host harness; seqread at msize 1 MiB)", rat, ["fsd / diod"])


MODES = ("never", "auto", "always")


def host_virtiofs(out):
    rows = read_rows(os.path.join(out, "host-virtiofs.csv"))
    limit, memcpy = load_limit(out, "pread-spread")
    by, order = group(rows)
    lines = [
        "| workload | request | in flight | cache | fsd | C virtiofsd | fsd/C | Rust virtiofsd | fsd/Rust | fsd / pread limit |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = []  # (label, {mode: ratio})
    for key in order:
        base, size, depth = key
        per_mode = {}
        for mode in MODES:
            f, v = by[key].get(f"fsd:{mode}"), by[key].get(f"virtiofsd:{mode}")
            r = by[key].get(f"virtiofsd-rust:{mode}")
            if not f and not v and not r:
                continue
            unit = (f or v or r)["unit"]
            rust_ratio = f"{float(f['median']) / float(r['median']):.2f}×" if f and r and float(r["median"]) > 0 else "–"
            ratio = "–"
            if f and v and float(v["median"]) > 0:
                per_mode[mode] = float(f["median"]) / float(v["median"])
                ratio = f"{per_mode[mode]:.2f}×"
            lim = limit_at(limit, size, depth)
            frac = f"{float(f['median']) / lim:.0%}" if f and unit == "MiB/s" and lim else "–"
            name = base + (" (READDIRPLUS)" if f and "(plus)" in f["workload"] else "")
            differs = f and v and ("(plus)" in f["workload"]) != ("(plus)" in v["workload"])
            vcell = (cell(v) + (" †" if differs else "")) if v else "–"
            lines.append(f"| {name} ({unit}) | {f'{size // 1024}K' if size else '–'} | {depth} | {mode} | "
                         f"{cell(f) if f else '–'} | {vcell} | {ratio} | {cell(r) if r else '–'} | {rust_ratio} | {frac} |")
        ratios.append((f"{base}{' ' + str(size // 1024) + 'K' if base == 'seqread' else ''} d{depth}", per_mode))
    notes = ["", "Median (min–max) of 3 runs. \"in flight\": requests kept in the queue at once, as a guest with that "
             "many busy threads makes. Every server serves plain READDIR with cache=never and READDIRPLUS otherwise; "
             "† marks a row where they differ."]
    notes += limit_note(limit, memcpy, "into memory spread over 256 MiB, as the front-end's guest memory is")
    write_md(out, "host-virtiofs.md", lines + notes)
    rat = os.path.join(out, "host-virtiofs-ratios.dat")
    with open(rat, "w") as f:
        for label, per_mode in ratios:
            f.write(f'"{label}" ' + " ".join(f"{per_mode.get(m, 0):.3f}" for m in MODES) + "\n")
    ratio_histogram(out, "host-virtiofs-ratios.png", "fsd / virtiofsd (host harness, vhost-user), per cache mode", rat,
                    [f"cache={m}" for m in MODES])


def host_virtiofs_mq(out):
    """fsd with a multiqueue front-end (host-virtiofs-mq.csv) beside its single-queue row and both
    virtiofsds' (which serve one request queue) from host-virtiofs.csv, cache=auto."""
    mq_rows = [r for r in read_rows(os.path.join(out, "host-virtiofs-mq.csv")) if not r["workload"].endswith(":cpu")]
    base_path = os.path.join(out, "host-virtiofs.csv")
    by_base, _ = group(read_rows(base_path)) if os.path.exists(base_path) else ({}, [])
    by, order = group(mq_rows)
    lines = [
        "| workload | request | in flight | fsd, N queues | fsd, 1 queue | N/1 | better virtiofsd (1 queue) | fsd N / it |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    labels = set()
    for key in order:
        base, size, depth = key
        for label, r in by[key].items():
            labels.add(label)
            one = by_base.get(key, {}).get("fsd:auto")
            peers = [by_base.get(key, {}).get(p) for p in ("virtiofsd:auto", "virtiofsd-rust:auto")]
            peers = [p for p in peers if p and float(p["median"]) > 0]
            best = max(peers, key=lambda p: float(p["median"])) if peers else None
            n1 = f"{float(r['median']) / float(one['median']):.2f}×" if one and float(one["median"]) > 0 else "–"
            nb = f"{float(r['median']) / float(best['median']):.2f}×" if best else "–"
            lines.append(f"| {base} ({r['unit']}) | {f'{size // 1024}K' if size else '–'} | {depth} | {cell(r)} | "
                         f"{cell(one) if one else '–'} | {n1} | {cell(best) if best else '–'} | {nb} |")
    notes = ["", f"Rows: {', '.join(sorted(labels))}. The front-end spreads its request streams over N request queues "
             "(stream i on queue i mod N), as a multiqueue guest (Linux 6.11 and later) maps its CPUs; fsd gives each "
             "queue an owning worker. Neither virtiofsd offers more than one request queue, so their rows are their "
             "single-queue ones, from the same run. Median (min–max) of 3 runs, cache=auto."]
    write_md(out, "host-virtiofs-mq.md", lines + notes)


GUEST_WORKLOADS = ("seqread", "find", "find-warm", "tar", "tar-warm", "create1000", "untar", "append2000", "write4k", "true")


def guest(out):
    rows = read_rows(os.path.join(out, "guest.csv"))
    by = defaultdict(dict)  # (config, msize) -> workload -> row
    for r in rows:
        by[(r["server"], int(r["msize"]))][r["workload"]] = r
    configs = list(by)
    workloads = [w for w in GUEST_WORKLOADS if any(w in v for v in by.values())]
    units = {w: next(v[w]["unit"] for v in by.values() if w in v) for w in workloads}
    lines = ["| configuration | msize | " + " | ".join(f"{w} ({units[w]})" for w in workloads) + " |",
             "|---|---:|" + "---:|" * len(workloads)]
    for c in configs:
        cells = []
        for w in workloads:
            r = by[c].get(w)
            cells.append(f"{float(r['median']):,.2f} ({float(r['min']):,.2f}–{float(r['max']):,.2f})" if r else "–")
        lines.append(f"| {c[0]} | {f'{c[1] // 1024}K' if c[1] else '–'} | " + " | ".join(cells) + " |")

    def speedup(a, b, w):
        """How many times faster config a is than b at w (>1: a faster)."""
        ra, rb = by.get(a, {}).get(w), by.get(b, {}).get(w)
        if not ra or not rb or float(ra["median"]) <= 0 or float(rb["median"]) <= 0:
            return None
        x = float(ra["median"]) / float(rb["median"])
        return x if ra["unit"] == "MiB/s" else 1 / x

    fsd = next((c for c in configs if c[0] == "fsd-virtiofs:auto"), None)
    pairs = [(c, b) for c in configs if c[0].startswith("fsd-virtiofs:")
             for b in configs if b[0] in ("virtiofsd:" + c[0].split(":")[1], "virtiofsd-rust:" + c[0].split(":")[1])]
    q9 = next((c for c in configs if c[0] == "qemu-9p:loose" and c[1] == 524288), None)
    if fsd and q9:
        pairs.append((fsd, q9))
    wb = next((c for c in configs if c[0] == "fsd-virtiofs:auto+writeback"), None)
    if fsd and wb:
        pairs.append((wb, fsd))
    about = os.path.join(out, "guest.txt")
    setup = "; ".join(l.removeprefix("guest: ") for l in open(about).read().split("\n") if l) if os.path.exists(about) else ""
    notes = ["", (f"Setup: {setup}. " if setup else "") + "Median (min–max) of 3 runs, in the guest (wall seconds; seqread in MiB/s). \"-warm\" runs straight "
             "after the cold runs, without dropping the guest's caches. true: the host's wall time for a whole vmlaunch run."]
    ratio_rows = []
    if pairs:
        notes += ["", "| speed-up (>1: the first is faster) | " + " | ".join(workloads) + " |",
                  "|---|" + "---:|" * len(workloads)]
        for a, b in pairs:
            xs = [speedup(a, b, w) for w in workloads]
            name = f"{a[0]} vs {b[0]}{f' {b[1] // 1024}K' if b[1] else ''}"
            notes.append(f"| {name} | " + " | ".join(f"{x:.2f}×" if x else "–" for x in xs) + " |")
            ratio_rows.append((name, xs))
    write_md(out, "guest.md", lines + notes)

    # Cache-mode comparison per workload: the virtio-fs configurations, time per workload (log scale).
    vf = [c for c in configs if c[0].startswith(("fsd-virtiofs:", "virtiofsd:", "virtiofsd-rust:"))]
    timed = [w for w in workloads if units[w] == "s"]
    if vf and timed:
        dat = os.path.join(out, "guest-cache-modes.dat")
        with open(dat, "w") as f:
            for w in timed:
                f.write(f'"{w}" ' + " ".join(by[c][w]["median"] if w in by[c] else "0" for c in vf) + "\n")
        plots = ", ".join(f"'{dat}' using {i + 2}{':xtic(1)' if i == 0 else ''} title '{c[0]}'" for i, c in enumerate(vf))
        gnuplot(out, "guest-cache-modes.png", f"""
set title 'virtio-fs in the guest: fsd and both virtiofsds per cache mode (lower is better)'
set style data histograms; set style histogram clustered gap 1; set style fill solid 0.7; set boxwidth 0.9
set ylabel 'seconds (log)'; set logscale y; set grid ytics; set key left top
plot {plots}
""")
    # Sequential read vs msize for the 9p configurations.
    nine = sorted({c[0] for c in configs if "9p" in c[0]})
    if nine:
        dat = os.path.join(out, "guest-9p-seqread.dat")
        titles = []
        with open(dat, "w") as f:
            for name in nine:
                pts = sorted((c[1], float(by[c]["seqread"]["median"])) for c in configs if c[0] == name and "seqread" in by[c])
                if pts:
                    f.write(f"# {name}\n" + "".join(f"{m} {v}\n" for m, v in pts) + "\n\n")
                    titles.append(name)
        plots = ", ".join(f"'{dat}' index {i} with linespoints lw 2 title '{t}'" for i, t in enumerate(titles))
        gnuplot(out, "guest-9p-seqread.png", f"""
set title '9p in the guest: sequential read vs msize'
set xlabel 'msize'; set ylabel 'MiB/s'; set logscale x 2; set format x '%.0b %BB'; set key left top; set grid
plot {plots}
""")
    if ratio_rows:
        rat = os.path.join(out, "guest-ratios.dat")
        with open(rat, "w") as f:
            for i, w in enumerate(workloads):
                f.write(f'"{w}" ' + " ".join(f"{xs[i] or 0:.3f}" for _, xs in ratio_rows) + "\n")
        ratio_histogram(out, "guest-ratios.png", "fsd virtio-fs speed-up in the guest", rat, [n for n, _ in ratio_rows])


def scale(out):
    rows = read_rows(os.path.join(out, "scale.csv"))
    cost = {r["workload"]: r for r in rows if r["workload"].endswith("-per-frontend")}
    rates = [r for r in rows if r["unit"] == "ops/s"]
    lines = ["| workload | busy front-ends | aggregate | per front-end |", "|---|---:|---:|---:|"]
    for r in rates:
        k = int(r["conns"])
        lines.append(f"| {r['workload']} (ops/s) | {k} | {cell(r)} | {float(r['median']) / k:,.0f} |")
    notes = [""]
    if cost:
        n = next(iter(cost.values()))["conns"]
        rss, fds = cost.get("rss-per-frontend"), cost.get("fds-per-frontend")
        notes.append(f"{n} front-ends connected to one fsd (each a device on its own socket, 8 MiB of guest memory): "
                     + (f"{float(rss['median']):,.0f} KiB of fsd's RSS" if rss else "")
                     + (f" and {float(fds['median']):.0f} fds" if fds else "") + " per idle front-end.")
    notes.append("Each busy front-end is a thread with one request in flight, as a one-vCPU guest; "
                 "median (min–max) of 3 runs.")
    write_md(out, "scale.md", lines + notes)
    dat = os.path.join(out, "scale.dat")
    series = []
    with open(dat, "w") as f:
        for w in ("randread4k", "lookup+getattr"):
            pts = [(int(r["conns"]), float(r["median"])) for r in rates if r["workload"] == w]
            if pts:
                f.write(f"# {w}\n" + "".join(f"{k} {v}\n" for k, v in pts) + "\n\n")
                series.append(w)
    plots = ", ".join(f"'{dat}' index {i} with linespoints lw 2 title '{t}'" for i, t in enumerate(series))
    if plots:
        gnuplot(out, "scale.png", f"""
set title 'One fsd, many front-ends (virtio-fs host harness, cache=auto)'
set xlabel 'busy front-ends'; set ylabel 'aggregate ops/s'; set logscale x 2; set yrange [0:*]; set key left top; set grid
plot {plots}
""")


def summary(out):
    """Every target of the performance issue, from this run's CSVs: met or not, with the ratio."""
    limit, _ = load_limit(out)
    spread, _ = load_limit(out, "pread-spread")
    lines = ["| target | row | measured | goal | met |", "|---|---|---:|---:|---|"]

    def add(target, row, value, goal, ok, fmt_v="{:.2f}×", fmt_g="≥ {:.2f}×"):
        lines.append(f"| {target} | {row} | {fmt_v.format(value)} | {fmt_g.format(goal)} | {'yes' if ok else '**no**'} |")

    path = os.path.join(out, "host-virtiofs.csv")
    if os.path.exists(path):
        by, order = group(read_rows(path))
        for key in order:
            base, size, depth = key
            for mode in ("never", "auto", "always"):
                f = by[key].get(f"fsd:{mode}")
                peers = [by[key].get(f"{p}:{mode}") for p in ("virtiofsd", "virtiofsd-rust")]
                peers = [float(p["median"]) for p in peers if p and float(p["median"]) > 0]
                if not f or not peers:
                    continue
                ratio = float(f["median"]) / max(peers)
                if base in ("randread4k", "lookup+getattr", "create+unlink") and mode != "never" or \
                        base == "readdir10k" and mode != "never" and "(plus)" in f["workload"]:
                    name = "READDIRPLUS" if base == "readdir10k" else base
                    add("virtio-fs ≥ 1.3× the better virtiofsd", f"{name} d{depth} cache={mode}", ratio, 1.3, ratio >= 1.3)
                elif base == "readdir10k" and mode == "never":
                    add("virtio-fs plain READDIR ≥ 1.0× the better virtiofsd", f"READDIR d{depth} cache=never", ratio, 1.0,
                        ratio >= 1.0)
                elif base == "seqread" and size == 1048576 and depth == 1 and mode == "auto" and limit_at(spread, size, 1):
                    frac = float(f["median"]) / limit_at(spread, size, 1)
                    hot = float(f["median"]) / limit_at(limit, size, 1) if limit_at(limit, size, 1) else 0
                    add("sequential 1 MiB reads ≥ 85% of pread",
                        f"virtio-fs, 1 in flight, cache=auto (pread into memory spread as guest memory is; "
                        f"{hot:.0%} of pread into a cache-hot buffer)", frac, 0.85, frac >= 0.85, "{:.0%}", "≥ {:.0%}")
    path = os.path.join(out, "host-9p.csv")
    if os.path.exists(path):
        by, order = group(r for r in read_rows(path) if r["layer"] == "host-9p")
        for key in order:
            base, msize, conns = key
            f, d = by[key].get("fsd"), by[key].get("diod")
            if base == "seqread" and msize == 1048576 and conns == 1 and f and limit_at(limit, msize, 1):
                frac = float(f["median"]) / limit_at(limit, msize, 1)
                add("sequential 1 MiB reads ≥ 85% of pread", "9P, 1 connection, msize 1 MiB (pread into a cache-hot buffer, as fsd's and the client's buffers are)", frac, 0.85, frac >= 0.85,
                    "{:.0%}", "≥ {:.0%}")
            if f and d and float(d["median"]) > 0 and (base != "seqread" or msize == 1048576):
                ratio = float(f["median"]) / float(d["median"])
                add("9P ≥ 2× diod", f"{base} {msize // 1024}K, {conns} conn{'s' if conns > 1 else ''}", ratio, 2.0,
                    ratio >= 2.0)
            v = by[key].get("fsd-vsock")
            if v and base == "seqread" and msize == 1048576 and limit_at(limit, msize, 1):
                frac = float(v["median"]) / limit_at(limit, msize, 1)
                add("9P over vsock: 1 MiB reads ≥ 85% of pread", "fsd's vsock device, 1 connection, msize 1 MiB",
                    frac, 0.85, frac >= 0.85, "{:.0%}", "≥ {:.0%}")
            if v and d and base in ("randread4k", "walk+getattr+clunk") and conns == 1 and float(d["median"]) > 0:
                ratio = float(v["median"]) / float(d["median"])
                add("9P over vsock ≥ 2× diod (unix socket)", f"{base}, 1 connection", ratio, 2.0, ratio >= 2.0)
    path = os.path.join(out, "scale.csv")
    if os.path.exists(path):
        rows = read_rows(path)
        cores = os.cpu_count() or 1
        for w in ("randread4k", "lookup+getattr"):
            pts = sorted((int(r["conns"]), float(r["median"])) for r in rows if r["workload"] == w)
            if len(pts) < 2:
                continue
            # The first measured count at or past the cores: from there on the rate may not fall.
            at_cores = min((p for p in pts if p[0] >= cores), default=pts[-1])
            peak = max(v for _, v in pts)
            last = pts[-1]
            drop = last[1] / max(at_cores[1], 1)
            add("scale: no fall > 10% past the cores", f"{w}: {last[0]} vs {at_cores[0]} busy front-ends", drop, 0.9,
                drop >= 0.9, "{:.2f}×", "≥ {:.2f}×")
            lines.append(f"| | {w}: peak {peak:,.0f} ops/s | | | |")
        rss = next((float(r["median"]) for r in rows if r["workload"] == "rss-per-frontend"), None)
        if rss is not None:
            add("RSS per idle front-end < 1 MiB", "virtio-fs front-end", rss, 1024, rss < 1024, "{:,.0f} KiB", "< {:,.0f} KiB")
    path = os.path.join(out, "guest.csv")
    if not os.path.exists(path):
        lines.append("| guest under TCG: no workload slower than the best virtiofsd | (not in this run: --no-guest) | | | |")
    else:
        by = defaultdict(dict)
        for r in read_rows(path):
            by[r["server"]][r["workload"]] = r
        for mode in ("never", "auto", "always"):
            f = by.get(f"fsd-virtiofs:{mode}", {})
            for w, r in f.items():
                peers = [by.get(f"{p}:{mode}", {}).get(w) for p in ("virtiofsd", "virtiofsd-rust")]
                peers = [p for p in peers if p and float(p["median"]) > 0]
                if not peers or float(r["median"]) <= 0:
                    continue
                faster = (lambda x: float(x["median"])) if r["unit"] == "MiB/s" else (lambda x: 1 / float(x["median"]))
                best = max(peers, key=faster)
                ratio = faster(r) / faster(best)
                # Noise: the spread of fsd's own three runs, as a fraction of its median.
                noise = (float(r["max"]) - float(r["min"])) / float(r["median"])
                add("guest (TCG): not slower than the best virtiofsd beyond noise", f"{w} cache={mode} (noise ±{noise / 2:.0%})",
                    ratio, 1 - noise / 2, ratio >= 1 - noise / 2)
    lines.append("| launch: vmlaunch -- true ≥ 1.3× a hand-written -virtfs boot | bench/boot_vs_9p.sh, not part of bench/run | | | |")
    write_md(out, "summary.md", ["# Targets", ""] + lines +
             ["", "Ratios are medians of 3 runs measured side by side in one run; \"the better virtiofsd\" is the "
              "faster of the C and the Rust one on that row. The guest rows come from guest.csv, which a run with "
              "--no-guest leaves as the last guest run wrote it."])


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
    write_md(out, "micro.md", lines + ["", "CPU time per iteration, median of 3 repetitions."])


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):
        micro(out, sys.argv[2])
    if os.path.exists(os.path.join(out, "host-9p.csv")):
        host_9p(out)
    if os.path.exists(os.path.join(out, "host-virtiofs.csv")):
        host_virtiofs(out)
    if os.path.exists(os.path.join(out, "host-virtiofs-mq.csv")):
        host_virtiofs_mq(out)
    if os.path.exists(os.path.join(out, "guest.csv")):
        guest(out)
    if os.path.exists(os.path.join(out, "scale.csv")):
        scale(out)
    summary(out)


if __name__ == "__main__":
    main()
