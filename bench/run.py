"""Run every workload for ours, the reference release and plain pyarrow, interleaved,
and write bench/results.md and bench/ratios.png. Called by bench/run.sh."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
QUICK = os.environ.get("BENCH_QUICK") == "1"
REPEATS = int(os.environ.get("BENCH_REPEATS", "1" if QUICK else "15"))
PYTHONS = {
    "ours": HERE / ".venv-ours" / "bin" / "python",
    "ref": HERE / ".venv-ref" / "bin" / "python",
    "pyarrow": HERE / ".venv-ours" / "bin" / "python",
}
# run.sh built BENCH_BASELINE (a git revision) as "before": our code at that revision.
BASELINE = os.environ.get("BENCH_BASELINE_NAME")
if BASELINE:
    PYTHONS["before"] = HERE / ".venv-base" / "bin" / "python"
WORKLOADS = ["memory", "disk", "disk-ingest", "tiny-batches", "tiny-batches-3", "tiny-batches-10", "4-threads",
             "duckdb-selfjoin", "bounded", "sliced", "prefetch", "first-pass-1", "first-pass-3", "first-pass-10",
             "one-row-batches"]
# The same workloads repeated inside one long-lived process (a notebook, a service):
# LONG_REPEATS runs per process, the median of those after the first, LONG_ROUNDS processes.
LONG_WORKLOADS = ["memory", "tiny-batches", "tiny-batches-3", "tiny-batches-10", "4-threads", "duckdb-selfjoin",
                  "prefetch", "first-pass-1", "first-pass-3", "first-pass-10", "one-row-batches"]
# Fresh samples per round, where one is not enough: the DuckDB self-join's target (2%) is
# tighter than its samples spread (10 to 30%), so it takes three per round.
SAMPLES_PER_ROUND = {"duckdb-selfjoin": 3}
LONG_REPEATS = int(os.environ.get("BENCH_LONG_REPEATS", "2" if QUICK else "6"))
LONG_ROUNDS = int(os.environ.get("BENCH_LONG_ROUNDS", "1" if QUICK else "5"))
# BENCH_WORKLOADS=memory,sliced runs those alone (sliced needs memory, its yardstick),
# and writes build/bench-partial.md instead of the committed results.
PARTIAL = bool(os.environ.get("BENCH_WORKLOADS"))
if PARTIAL:
    WORKLOADS = [w for w in WORKLOADS if w in os.environ["BENCH_WORKLOADS"].split(",")]
    LONG_WORKLOADS = [w for w in LONG_WORKLOADS if w in WORKLOADS]
# Our target per workload: the largest acceptable ratio, and what it is a ratio to.
TARGETS = {
    "memory": ("pyarrow", 1.1),
    "disk": ("ref", 0.5),
    "disk-ingest": ("pyarrow", 1.5),
    "tiny-batches": ("pyarrow", 5.0),
    "4-threads": ("pyarrow", 1.3),
    "duckdb-selfjoin": ("pyarrow", 1.02),
    "bounded": ("ref", 1.0),
    "sliced": ("ours memory, per byte", 1.1),
    "prefetch": ("pyarrow", 1.15),
    # Issue 20: against pyarrow's own round trip of the source through the C interface.
    "first-pass-1": ("pyarrow", 2.0),
    "first-pass-3": ("pyarrow", 2.0),
    "first-pass-10": ("pyarrow", 2.0),
    # Context for the 1-column tiny-batches target, with a string column: no target.
    "tiny-batches-3": ("pyarrow", None),
    "tiny-batches-10": ("pyarrow", None),
    # Issue 20 target 4: RSS per cached one-row batch against pyarrow holding them in a list.
    "one-row-batches": ("pyarrow", 1.25),
}
# Targets inside a long-lived process, where they differ from the fresh-process ones.
LONG_TARGETS = {"memory": ("pyarrow", 1.1)}

# Absolute targets: (the workload's result key, its largest acceptable value for ours).
ABSOLUTE = {"tiny-batches": ("us_per_batch", 2.0), "bounded": ("rss_growth_mib", 64)}


def run_one(impl: str, workload: str, repeat: int = 1) -> dict:
    # "before" is our own code at another revision: the same workload code as "ours".
    as_impl = "ours" if impl == "before" else impl
    command = [str(PYTHONS[impl]), str(HERE / "workloads.py"), "--impl", as_impl, "--workload", workload,
               "--repeat", str(repeat)]
    if QUICK:
        command.append("--quick")
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return {"seconds": None, "error": done.stderr.strip().splitlines()[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: list) -> str:
    """The range of one side's samples, so that a reader sees how noisy a median is."""
    values = [v for v in values if v is not None]
    return f"{min(values):.4f}-{max(values):.4f}" if len(values) > 1 else "-"


def verdict_of(ratio: float | None, limit: float | None) -> str:
    return "n/a" if ratio is None or limit is None else ("met" if ratio <= limit else "MISSED")


def target_text(limit: float | None) -> str:
    return "-" if limit is None else f"<= {limit}x"


def long_lived_rows(long_samples: dict[tuple[str, str], list[dict]]) -> list[str]:
    """The table of the workloads repeated inside one long-lived process."""
    if not LONG_WORKLOADS:
        return []
    rows = [
        "",
        f"Inside one long-lived process: each sample is a process that runs the workload "
        f"{LONG_REPEATS} times and reports the median of the runs after the first; medians "
        f"of {LONG_ROUNDS} such processes, interleaved.",
        "",
        "| workload | ours s | reference s | pyarrow s | ratio | target | verdict | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"
    for workload in LONG_WORKLOADS:
        base, limit = LONG_TARGETS.get(workload, TARGETS[workload])
        if workload == "one-row-batches":
            rows.append(in_use_per_batch_row(long_samples, base, limit))
            continue
        seconds = {i: median([s.get("seconds") for s in long_samples[(i, workload)]]) for i in PYTHONS}
        ratio = seconds["ours"] / seconds[base] if seconds["ours"] and seconds[base] else None
        verdict = verdict_of(ratio, limit)
        per_batch = [
            f"{i} {median([s.get('us_per_batch') for s in long_samples[(i, workload)]]):.2f}"
            for i in PYTHONS if median([s.get("us_per_batch") for s in long_samples[(i, workload)]])
        ]
        extra = ("us/batch: " + ", ".join(per_batch) + "; ") if per_batch else ""
        extra += "range s: " + ", ".join(
            f"{i} {spread([x.get('seconds') for x in long_samples[(i, workload)]])}"
            for i in dict.fromkeys(("ours", base))
        )
        rows.append(
            f"| {workload} | {fmt(seconds['ours'])} | {fmt(seconds['ref'])} | {fmt(seconds['pyarrow'])} "
            f"| {('-' if ratio is None else f'{ratio:.2f}x')} {base} | {target_text(limit)} | {verdict} | {extra} |"
        )
    return rows


def in_use_per_batch_row(long_samples: dict[tuple[str, str], list[dict]], base: str,
                         limit: float) -> str:
    """one-row-batches inside a long-lived process: the bytes in use per batch (pyarrow's
    pool and the malloc heap), since RSS there grows by what earlier runs freed, or not."""
    samples = {impl: long_samples[(impl, "one-row-batches")] for impl in PYTHONS}
    in_use = {impl: median([s["pool_bytes_per_batch"] + s["heap_bytes_per_batch"]
                            for s in runs if s.get("heap_bytes_per_batch") is not None])
              for impl, runs in samples.items()}
    rss = {impl: median([s.get("bytes_per_batch") for s in runs]) for impl, runs in samples.items()}
    ratio = in_use["ours"] / in_use[base] if in_use["ours"] and in_use[base] else None
    shown = lambda values: ", ".join(f"{i} {v:.0f}" for i, v in values.items() if v is not None)  # noqa: E731
    return (f"| one-row-batches | - | - | - | {('-' if ratio is None else f'{ratio:.2f}x')} {base} "
            f"| {target_text(limit)} | {verdict_of(ratio, limit)} | bytes in use per batch (pyarrow's "
            f"pool and the malloc heap): {shown(in_use)}; RSS growth per batch: {shown(rss)} |")


def version(python: Path, module: str) -> str:
    code = f"import importlib.metadata as m; print(m.version('{module}'))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main() -> None:
    samples: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(REPEATS):
        for workload in WORKLOADS:
            for _ in range(SAMPLES_PER_ROUND.get(workload, 1)):
                for impl in PYTHONS:  # interleaved, so drift hits every side alike
                    samples.setdefault((impl, workload), []).append(run_one(impl, workload))
        print(f"round {repeat + 1}/{REPEATS} done", flush=True)
    long_samples: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(LONG_ROUNDS):
        for workload in LONG_WORKLOADS:
            for impl in PYTHONS:
                long_samples.setdefault((impl, workload), []).append(run_one(impl, workload, LONG_REPEATS))
        print(f"long-lived round {repeat + 1}/{LONG_ROUNDS} done", flush=True)

    c_level = json.loads(
        subprocess.run([str(HERE.parent / "build" / "c_level")], capture_output=True, text=True,
                       check=True).stdout
    )
    rows, ratios = [], {}
    for workload in WORKLOADS:
        seconds = {i: median([s.get("seconds") for s in samples[(i, workload)]]) for i in PYTHONS}
        base, limit = TARGETS[workload]
        ours = seconds["ours"]
        if workload == "sliced":
            # Per byte, against our own memory workload: slicing must not cost extra.
            memory_s = median([x.get("seconds") for x in samples[("ours", "memory")]])
            memory_b = samples[("ours", "memory")][0].get("bytes")
            sliced_b = samples[("ours", "sliced")][0].get("bytes")
            ratio = (ours / sliced_b) / (memory_s / memory_b) if ours and memory_s else None
        elif workload == "one-row-batches":
            per_batch = {i: median([x.get("bytes_per_batch") for x in samples[(i, workload)]]) for i in PYTHONS}
            ratio = per_batch["ours"] / per_batch[base] if per_batch["ours"] and per_batch[base] else None
        else:
            other = seconds[base]
            ratio = ours / other if ours and other else None
        ratios[workload] = ratio
        extra = ""
        if workload == "tiny-batches" or workload.startswith("first-pass"):
            extra = "us/batch: " + ", ".join(
                f"{i} {median([s.get('us_per_batch') for s in samples[(i, workload)]]):.2f}"
                for i in PYTHONS if median([s.get('us_per_batch') for s in samples[(i, workload)]])
            )
            crossed = median([s.get("c_roundtrip_us_per_batch") for s in samples[("pyarrow", workload)]])
            if crossed is not None:
                extra += f"; one pyarrow pass of the source through C: {crossed:.2f}"
        if workload == "duckdb-selfjoin":
            warm = {k: median([s.get(f"warm_{k}_seconds") for s in samples[("pyarrow", workload)]])
                    for k in ("table", "c_stream")}
            if all(warm.values()):
                extra = (f"rerun warm in pyarrow's process: table {warm['table']:.4f} s, "
                         f"the table as a plain C stream {warm['c_stream']:.4f} s")
        if workload == "bounded":
            extra = "RSS growth MiB: " + ", ".join(
                f"{i} {median([s.get('rss_growth_mib') for s in samples[(i, workload)]]):.0f}"
                for i in PYTHONS if median([s.get('rss_growth_mib') for s in samples[(i, workload)]]) is not None
            )
        if workload == "one-row-batches":
            extra = "bytes per batch (RSS; pyarrow's pool; malloc heap): " + ", ".join(
                f"{i} " + "; ".join(
                    f"{median([x.get(k) for x in samples[(i, workload)]]):.0f}"
                    for k in ("bytes_per_batch", "pool_bytes_per_batch", "heap_bytes_per_batch"))
                for i in PYTHONS if median([x.get("bytes_per_batch") for x in samples[(i, workload)]])
            )
        elif workload != "sliced":
            ranges = ", ".join(
                f"{i} {spread([x.get('seconds') for x in samples[(i, workload)]])}"
                for i in dict.fromkeys(("ours", base))
            )
            extra = f"{extra}; " if extra else ""
            extra += f"range s: {ranges}"
        errors = {i: s.get("error") for i in PYTHONS for s in samples[(i, workload)] if s.get("error")}
        if errors:
            extra += " errors: " + "; ".join(f"{i}: {e}" for i, e in errors.items())
        verdict = verdict_of(ratio, limit)
        # Absolute targets beside the ratio: both must hold.
        absolute = ABSOLUTE.get(workload)
        if absolute is not None and verdict == "met":
            key, most = absolute
            value = median([s.get(key) for s in samples[("ours", workload)]])
            if value is None or value > most:
                verdict = f"MISSED ({key} > {most})"
        fmt = lambda v: "-" if v is None else f"{v:.4f}"
        rows.append(
            f"| {workload} | {fmt(seconds['ours'])} | {fmt(seconds['ref'])} | {fmt(seconds['pyarrow'])} "
            f"| {('-' if ratio is None else f'{ratio:.2f}x')} {base} | {target_text(limit)} | {verdict} | {extra} |"
        )
    above = c_level["ns_per_batch"] - c_level["plain_ns_per_batch"]
    ingest_above = c_level["ingest_ns_per_batch"] - c_level["producer_ns_per_batch"]
    rows.append(
        f"| c-level | {c_level['ns_per_batch']:.0f} ns/batch | - | plain loop {c_level['plain_ns_per_batch']:.1f} ns "
        f"| {above:.0f} ns above | < 300 ns | {'met' if above < 300 else 'MISSED'} | get_next + release; "
        f"ingestion {ingest_above:.0f} ns/batch above the producer's {c_level['producer_ns_per_batch']:.0f} |"
    )
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    ours_py = PYTHONS["ours"]
    header = [
        "# Benchmark results",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"- machine: {os.cpu_count()} cores, {cpu}, {platform.platform()}",
        f"- python {platform.python_version()}, pyarrow {version(ours_py, 'pyarrow')}, "
        f"duckdb {version(ours_py, 'duckdb')}, batchcorder ours {version(ours_py, 'batchcorder')}, "
        f"reference {version(PYTHONS['ref'], 'batchcorder')}",
        f"- medians of {REPEATS} interleaved runs, each in a fresh process"
        + "".join(f" ({REPEATS * n} for {w})" for w, n in SAMPLES_PER_ROUND.items() if w in WORKLOADS)
        + (" (BENCH_QUICK: tiny sizes, not comparable)" if QUICK else ""),
        "",
        "| workload | ours s | reference s | pyarrow s | ratio | target | verdict | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if BASELINE:
        header_before = [
            "",
            f"Before and after, in this run: ours against {BASELINE}, built from a clean checkout.",
            "",
            "| workload | before s | ours s | ours / before |",
            "|---|---|---|---|",
        ]
        for workload in WORKLOADS:
            now = median([s.get("seconds") for s in samples[("ours", workload)]])
            then = median([s.get("seconds") for s in samples[("before", workload)]])
            change = f"{now / then:.2f}x" if now and then else "-"
            fmt = lambda v: "-" if v is None else f"{v:.4f}"
            header_before.append(f"| {workload} | {fmt(then)} | {fmt(now)} | {change} |")
        rows = rows + header_before
    rows = rows + long_lived_rows(long_samples)
    text = "\n".join(header + rows) + "\n"
    if PARTIAL:
        out = HERE.parent / "build" / "bench-partial.md"
        out.parent.mkdir(exist_ok=True)
        out.write_text(text)
        print(f"a partial run: written to {out}, bench/results.md untouched")
        return
    (HERE / "results.md").write_text(text + (HERE / "notes.md").read_text())
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = [w for w in WORKLOADS if ratios[w] is not None]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.bar(names, [ratios[w] for w in names], color="#4477aa")
        ax.scatter(names, [TARGETS[w][1] or float("nan") for w in names], color="#cc3311", marker="_", s=600,
                   label="target", zorder=3)
        ax.set_ylabel("ours / baseline (lower is better)")
        ax.set_title("batchcorder: ratio to the target's baseline")
        ax.legend()
        plt.xticks(rotation=20)
        fig.tight_layout()
        fig.savefig(HERE / "ratios.png", dpi=120)
    except ImportError:
        print("matplotlib missing: no chart")


if __name__ == "__main__":
    main()
