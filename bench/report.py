"""The report of a bench run: the issue's targets, met or missed, then the tables; printed and
written into ``bench/RESULTS.md``.

Only the part of RESULTS.md between the two markers is rewritten, so the hand-written notes
around the tables survive a re-run.
"""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.clients import AIOHTTP, ENGINE, IDEAL, NAIVE, REPO
from bench.overhead import Overhead
from bench.readpaths import DenseRow, ResumeRow
from bench.scale import ScaleRow
from bench.shapes import RATE_LIMIT
from bench.tables import (
    REFUSED_NOTE,
    baseline_table,
    marginal_us_per_job,
    overhead_table,
    ratio,
    read_tables,
    scale_table,
    utilisation_table,
)
from bench.utilisation import UtilRow

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
#: The issue's targets: steady shapes against the sliding best; one-window shapes against
#: uniform (the wait for the first arrival), the ideal client (CPU per request), the naive
#: script (makespan from the command's start), and the wait to exit.
STEADY_RATIO, FIRST_ARRIVAL_RATIO, CPU_RATIO, EXIT_S = 1.06, 2.0, 2.0, 0.2
MIN_RATE, MAX_VALIDATE_S, MAX_RUN_MB, MAX_BYTES_PER_JOB = 2000, 10.0, 300, 1024


@dataclass(frozen=True, slots=True)
class Results:
    """Everything one bench run measured."""

    util: list[UtilRow] = field(default_factory=list)
    overhead: Overhead | None = None
    #: The baseline tree's engine, measured interleaved with this one's.
    overhead_baseline: Overhead | None = None
    scale: list[ScaleRow] = field(default_factory=list)
    resume: list[ResumeRow] = field(default_factory=list)
    dense: DenseRow | None = None


def _mark(met: bool) -> str:
    return "met" if met else "**MISSED**"


def _one_window(row: UtilRow) -> bool:
    return max(row.shape.jobs_per_key) <= RATE_LIMIT


def _spread(row: UtilRow) -> str:
    if len(row.makespans) < 2:
        return ""
    low, high = (ratio(m, row.sliding_best) for m in (min(row.makespans), max(row.makespans)))
    return f" (its {len(row.makespans)} runs: {low:.3f} to {high:.3f})"


def _headline(r: UtilRow, target: str = "") -> str:
    return (
        f"{r.shape.name} at {r.latency * 1000:g} ms: {ratio(r.makespan, r.sliding_best):.3f} of "
        f"the sliding best{_spread(r)}{target}, {ratio(r.from_start, r.sliding_best):.3f} from "
        f"the command's start; {r.stats.http_429} 429s, {r.stats.violations} violations, "
        f"{r.failed} failed"
    )


def _steady(r: UtilRow) -> str:
    clean = r.stats.http_429 == 0 and r.stats.violations == 0 and r.failed == 0
    met = ratio(r.makespan, r.sliding_best) <= STEADY_RATIO and clean
    return f"- {_mark(met)}: {_headline(r, f' (target <= {STEADY_RATIO})')}"


def _wide(r: UtilRow, by: dict[tuple[str, float, str], UtilRow]) -> list[str]:
    lines = [f"- {_headline(r)}"]
    uniform = by.get(("uniform", r.latency, ENGINE))
    if uniform is not None:
        value = ratio(r.connect_to_arrival, uniform.connect_to_arrival)
        lines.append(
            f"  - {_mark(value <= FIRST_ARRIVAL_RATIO)}: sender start (first connection) to "
            f"first arrival {r.connect_to_arrival:.3f} s, uniform's "
            f"{uniform.connect_to_arrival:.3f} s: {value:.2f}x (target <= "
            f"{FIRST_ARRIVAL_RATIO:g}x); {r.stats.connects_before_first_arrival} connections "
            f"opened before the first request ({r.stats.connects} in all), uniform's "
            f"{uniform.stats.connects_before_first_arrival}; from the command's start "
            f"{r.to_first_arrival:.3f} s, uniform's {uniform.to_first_arrival:.3f} s"
        )
    ideal = by.get((r.shape.name, r.latency, IDEAL))
    if ideal is not None:
        value = ratio(r.cpu_per_request_us, ideal.cpu_per_request_us)
        lines.append(
            f"  - {_mark(value <= CPU_RATIO)}: engine CPU {r.cpu_per_request_us:.0f} us per "
            f"request, the ideal client's {ideal.cpu_per_request_us:.0f}: {value:.2f}x "
            f"(target <= {CPU_RATIO:g}x)"
        )
        floor = by.get((r.shape.name, r.latency, AIOHTTP))
        if floor is not None:
            alone = floor.cpu_per_request_us
            lines.append(
                f"    - aiohttp alone (`bench.floor`: no limiter, no records, signed "
                f"beforehand) {alone:.0f} us: {ratio(alone, ideal.cpu_per_request_us):.2f}x "
                f"the ideal client's; the engine {ratio(r.cpu_per_request_us, alone):.2f}x "
                "aiohttp alone"
            )
    naive = by.get((r.shape.name, r.latency, NAIVE))
    if naive is not None:
        value = ratio(r.from_start, naive.from_start)
        clean = r.stats.violations == 0
        lines.append(
            f"  - {_mark(value <= 1 and clean)}: makespan from the command's start "
            f"{r.from_start:.3f} s, the naive script's {naive.from_start:.3f} s: {value:.3f} "
            f"(target <= 1, 0 violations: {r.stats.violations})"
        )
    lines.append(
        f"  - {_mark(r.exit_after_answer <= EXIT_S)}: last answer to exit "
        f"{r.exit_after_answer:.3f} s (target <= {EXIT_S:g} s)"
    )
    return lines


def targets(results: Results) -> str:
    """One line per target of the issue: met or missed, with the number."""
    util = results.util
    by = {(r.shape.name, r.latency, r.client): r for r in util}
    lines = []
    for r in (r for r in util if r.client == ENGINE):
        lines += _wide(r, by) if _one_window(r) else [_steady(r)]
    if results.overhead is not None:
        rate = results.overhead.large.rate
        lines.append(
            f"- {_mark(rate >= MIN_RATE)}: {rate:.0f} req/s with the limit lifted "
            f"(target >= {MIN_RATE})"
        )
    lines += _input_targets(results)
    return "\n".join(lines)


def _input_targets(results: Results) -> list[str]:
    lines, scale = [], results.scale
    largest = max(scale, key=lambda r: r.jobs, default=None)
    if largest is not None:
        lines.append(
            f"- {_mark(largest.validate.wall < MAX_VALIDATE_S)}: {largest.jobs} jobs validated "
            f"in {largest.validate.wall:.2f} s (target < {MAX_VALIDATE_S:g} s)"
        )
        if largest.run is not None:
            lines.append(
                f"- {_mark(largest.run.peak_rss_mb <= MAX_RUN_MB)}: run of {largest.jobs} jobs "
                f"peaked at {largest.run.peak_rss_mb:.0f} MB (target <= {MAX_RUN_MB} MB)"
            )
    steps = [s for s in marginal_us_per_job(scale) if s is not None]
    if len(steps) > 1:
        growth = steps[-1] / steps[0]
        lines.append(
            f"- {_mark(growth < 1.5)}: loading linear: each added job costs "
            f"{', then '.join(f'{s:.0f}' for s in steps)} us (last step / first: {growth:.2f})"
        )
    for r in results.resume:
        once, twice = r.resume.peak_rss_mb, r.resume_twice.peak_rss_mb
        below = r.run_peak_mb is None or once < r.run_peak_mb
        lines.append(
            f"- {_mark(below and twice <= once * 1.05)}: resume of {r.jobs} ok jobs peaked at "
            f"{once:.0f} MB from {r.results_mb:.0f} MB of results, {twice:.0f} MB from "
            f"{r.twice_mb:.0f} MB (target: the same, below the run's own "
            f"{'-' if r.run_peak_mb is None else f'{r.run_peak_mb:.0f}'} MB)"
        )
        lines.append(
            f"- dry run: {r.per_job_us(r.dry_run):.0f} us of CPU per job, validation "
            f"{r.per_job_us(r.validate):.0f} (start-up included); each added job "
            f"{r.dry_run_extra_us:.1f} us more to prepare and print its request (target: "
            "signing and printing only)"
        )
    if results.dense is not None:
        d = results.dense
        lines.append(
            f"- {_mark(d.bytes_per_job <= MAX_BYTES_PER_JOB)}: validating {d.jobs} jobs "
            f"({d.file_mb:.0f} MiB) peaked at {d.bytes_per_job:.0f} bytes per job "
            f"(target <= {MAX_BYTES_PER_JOB})"
        )
    return lines


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--", "engine") else ""
    versions = ", ".join(f"{p} {_version(p)}" for p in ("aiohttp", "aiolimiter", "ccxt"))
    return (
        f"{len(os.sched_getaffinity(0))} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, {versions}; engine at {commit}{dirty}"
    )


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return ""


def render(command: str, results: Results, load: str, minutes: float, repeats: int = 1) -> str:
    parts = [f"Command: `{command}` ({minutes:.1f} min)", "", f"Machine: {machine()}", "",
             f"Load average (1 min): {load}.", "", "### Targets", "",
             targets(results)]  # fmt: skip
    if results.util:
        parts += ["", "### 1. Limit utilisation", "", utilisation_table(results.util), ""]
        parts += [REFUSED_NOTE]
        if repeats > 1:
            parts += ["", f"Cases whose sliding best is 5 s or less: the median of {repeats} "
                      "runs, the clients taking turns."]  # fmt: skip
        parts += ["", "### 2. Against the alternatives", "", baseline_table(results.util)]
    if results.overhead is not None:
        parts += ["", "### 3. Engine overhead (`--rate-limit 100000`, no latency)", ""]
        parts += [overhead_table(results.overhead)]
        if results.overhead_baseline is not None:
            parts += ["", "The baseline tree's engine, interleaved with this one's:", ""]
            parts += [overhead_table(results.overhead_baseline)]
    if results.scale:
        parts += ["", "### 4. Scale of input (1,000 accounts)", "", scale_table(results.scale)]
        if repeats > 1:
            parts += ["", f"Validation: the fastest of {repeats} runs per size."]
    if results.resume or results.dense is not None:
        parts += ["", "### 5. Read paths", "", read_tables(results.resume, results.dense)]
    return "\n".join(parts) + "\n"


def write_results(path: Path, body: str) -> None:
    """Replace what lies between the markers in ``path`` (the whole file if it has none)."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = "# Benchmark results\n\n", "\n"
    path.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")
