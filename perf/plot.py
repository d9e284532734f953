#!/usr/bin/env python3
"""Plots one ringlb-bench result: perf/plot.py RESULTS.json

Writes next to it <stem>-mpps.png (Mpps vs sessions, with testpmd io),
<stem>-ns.png (ns per packet per worker vs sessions) and <stem>-ratio.png
(ringlb / testpmd io per scenario and session count). Debian's
python3-matplotlib, no network, no display (Agg backend).
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCENARIOS = ["dsr", "nat-forward", "nat-reply"]


def single_worker(rows, scenario):
    pts = sorted((r["sessions"], r) for r in rows if r["workers"] == 1 and r["scenario"] == scenario)
    return [p[0] for p in pts], [p[1] for p in pts]


def per_sessions_plot(rows, refs, title, out, ylabel, value, ref_value):
    """One line per scenario against the table size, testpmd io dashed."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if refs:
        ax.plot([r[0] for r in refs], [ref_value(r[1]) for r in refs], "k--", marker="s", label="dpdk-testpmd io")
    for sc in SCENARIOS:
        xs, rs = single_worker(rows, sc)
        if xs:
            ax.plot(xs, [value(r) for r in rs], marker="o", label=f"ringlb {sc}")
    ax.set_xscale("log")
    ax.set_xlabel("sessions in the table")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return out


def main(path):
    res = json.loads(Path(path).read_text())
    rows = res["rows"]
    stem = Path(path).with_suffix("")
    title = f"ringlb-bench {res['timestamp']} — {res['machine']['cpu']}, {res['machine']['cores']} cores"
    written = []

    refs = sorted((r["sessions"], r["mpps"]) for r in res["references"] if r["workers"] == 1 and r["mode"] == "io")
    written.append(per_sessions_plot(rows, refs, title, f"{stem}-mpps.png", "Mpps (one worker, 60-byte frames)",
                                     lambda r: r["mpps"], lambda mpps: mpps))
    written.append(per_sessions_plot(rows, refs, title, f"{stem}-ns.png", "ns per packet per worker",
                                     lambda r: r["ns_per_packet"], lambda mpps: 1e3 / mpps))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sessions = sorted({r["sessions"] for r in rows if r["workers"] == 1 and r["scenario"] in SCENARIOS})
    width = 0.8 / len(SCENARIOS)
    for i, sc in enumerate(SCENARIOS):
        by = {r["sessions"]: r["ratio"] for r in rows if r["workers"] == 1 and r["scenario"] == sc}
        ax.bar([j + i * width for j in range(len(sessions))], [by.get(s, 0) for s in sessions], width, label=sc)
    ax.axhline(0.6, color="g", ls=":", label="DSR target 0.60")
    ax.axhline(0.5, color="r", ls=":", label="NAT target 0.50")
    ax.set_xticks([j + width for j in range(len(sessions))], [f"{s:,}" for s in sessions])
    ax.set_xlabel("sessions in the table")
    ax.set_ylabel("ringlb / testpmd io (same run, same vdevs)")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    out = f"{stem}-ratio.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    written.append(out)
    print("plots: " + " ".join(written))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: perf/plot.py RESULTS.json")
    main(sys.argv[1])
