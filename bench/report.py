"""Tables of ratios, printed and written into ``bench/RESULTS.md``.

Only the part of RESULTS.md between the two markers is rewritten, so the hand-written notes
around the tables survive a re-run.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from itertools import pairwise
from pathlib import Path

from bench.clients import CCXT, ENGINE, IDEAL, NAIVE, REPO
from bench.overhead import Overhead
from bench.scale import ScaleRow
from bench.utilisation import UtilRow

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
#: The issue's targets.
UTIL_RATIO, MIN_RATE, MAX_VALIDATE_S, MAX_RUN_MB = 1.05, 2000, 10.0, 300


def table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def _f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def utilisation_table(rows: list[UtilRow]) -> str:
    head = ["shape", "latency", "client", "makespan s", "minimum s", "ratio", "sliding best s",
            "vs sliding best", "429s", "violations", "max/key/1s", "failed jobs", "duplicates",
            "to client exit s", "client wall s", "client CPU s"]  # fmt: skip
    return table(
        head,
        (
            [
                f"{r.shape.name} ({r.shape.describe()})",
                f"{r.latency * 1000:g} ms",
                r.client,
                _f(r.makespan, 3),
                _f(r.minimum),
                f"**{_f(_ratio(r.makespan, r.minimum), 3)}**",
                _f(r.sliding_best),
                _f(_ratio(r.makespan, r.sliding_best), 3),
                r.stats.http_429,
                r.stats.violations,
                r.stats.max_in_window,
                r.failed,
                r.stats.duplicates,
                _f(r.to_exit),
                _f(r.usage.wall),
                _f(r.usage.cpu),
            ]
            for r in rows
        ),
    )


def baseline_table(rows: list[UtilRow]) -> str:
    by = {(r.shape.name, r.latency, r.client): r for r in rows}
    out = []
    for (shape, latency, client), engine in by.items():
        if client != ENGINE:
            continue
        cells: list[object] = [shape, f"{latency * 1000:g} ms"]
        for other in (NAIVE, CCXT):
            base = by.get((shape, latency, other))
            if base is None:
                cells += ["-", "-", "-"]
                continue
            cells.append(_f(_ratio(engine.makespan, base.makespan), 3))
            cells.append(_f(_ratio(engine.usage.wall, base.usage.wall), 3))
            tally = ", ".join(f"{k} {v}" for k, v in sorted((base.tally or {}).items()))
            refused = {k: v for k, v in base.stats.codes.items() if k not in ("SUCCESS", "-")}
            said = ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
            cells.append(
                f"429s {base.stats.http_429}, failed {base.failed}; it counted: {tally}"
                + (f"; the exchange answered: {said}" if said else "")
            )
        out.append(cells)
    head = ["shape", "latency", "engine/naive makespan", "engine/naive client wall",
            "naive outcome", "engine/ccxt makespan", "engine/ccxt client wall",
            "ccxt outcome"]  # fmt: skip
    return table(head, out)


def overhead_table(o: Overhead) -> str:
    rows = [
        [
            run.requests,
            f"**{run.rate:.0f}**",
            _f(run.stats.makespan),
            _f(run.run.cpu),
            _f(run.run.cpu / run.requests * 1000, 3),
            _f(run.stats.cpu),
            f"{run.run.peak_rss_mb:.0f}",
        ]
        for run in (o.small, o.large)
    ]
    head = ["requests", "req/s", "makespan s", "engine CPU s", "engine CPU s / 1000 req",
            "simulator CPU s", "engine peak RSS MB"]  # fmt: skip
    lines = [
        table(head, rows),
        "",
        f"- CPU per 1,000 more jobs (the difference of the two sizes, start-up removed): "
        f"**{o.marginal_per_1000:.3f} s**, of which loading the job file "
        f"{o.load_per_1000:.3f} s (`validate`, same files) and sending "
        f"**{o.send_per_1000:.3f} s**: one core sends at most "
        f"**{1000 / o.send_per_1000:.0f} req/s**."
        if o.send_per_1000 > 0
        else "",
        f"- Median of {o.repeats} run(s) per size, by req/s.",
    ]
    return "\n".join(lines)


def scale_table(rows: list[ScaleRow]) -> str:
    def run_cells(r: ScaleRow) -> list[object]:
        if r.run is None or r.stats is None:
            return ["-"] * 5
        ok = r.stats.accepted - r.stats.duplicates
        return [f"{ok}/{r.jobs}", _f(r.run.wall), f"**{r.run.peak_rss_mb:.0f}**",
                _f(r.results_mb, 1), r.run.returncode]  # fmt: skip

    steps = _marginal_us_per_job(rows)
    head = ["jobs", "file MB", "validate s", "validate us/job", "us per added job",
            "validate peak RSS MB", "run: accepted", "run wall s", "run peak RSS MB",
            "results MB", "run exit"]  # fmt: skip
    return table(
        head,
        (
            [
                r.jobs,
                _f(r.file_mb, 1),
                f"**{_f(r.validate.wall)}**",
                f"{r.validate_us_per_job:.0f}",
                "-" if step is None else f"{step:.0f}",
                f"{r.validate.peak_rss_mb:.0f}",
                *run_cells(r),
            ]
            for r, step in zip(rows, steps, strict=True)
        ),
    )


def _marginal_us_per_job(rows: list[ScaleRow]) -> list[float | None]:
    """Validation time per job added since the previous size: start-up cancels out, so a
    loader that is linear shows the same figure at every step."""
    steps: list[float | None] = [None]
    for before, after in pairwise(rows):
        steps.append(
            (after.validate.wall - before.validate.wall) / (after.jobs - before.jobs) * 1e6
        )
    return steps


def targets(util: list[UtilRow], over: Overhead | None, scale: list[ScaleRow]) -> str:
    """One line per target of the issue: met or missed, with the number."""
    lines = []
    ideals = {(r.shape.name, r.latency): r for r in util if r.client == IDEAL}
    for r in (r for r in util if r.client == ENGINE):
        ratio = _ratio(r.makespan, r.minimum)
        clean = r.stats.http_429 == 0 and r.stats.violations == 0 and r.failed == 0
        met = ratio <= UTIL_RATIO and clean
        spread = ""
        if len(r.makespans) > 1:
            low, high = (_ratio(m, r.minimum) for m in (min(r.makespans), max(r.makespans)))
            spread = f" (its {len(r.makespans)} runs: {low:.3f} to {high:.3f})"
        lines.append(
            f"- {'met' if met else '**MISSED**'}: {r.shape.name} at {r.latency * 1000:g} ms: "
            f"{ratio:.3f} of the minimum{spread} (target <= {UTIL_RATIO}), "
            f"{r.stats.http_429} 429s, {r.stats.violations} violations, {r.failed} failed"
            + _against_ideal(r, ideals.get((r.shape.name, r.latency)))
        )
    if over is not None:
        rate = over.large.rate
        lines.append(
            f"- {'met' if rate >= MIN_RATE else '**MISSED**'}: {rate:.0f} req/s with the limit "
            f"lifted (target >= {MIN_RATE})"
        )
    for r in scale:
        if r.jobs == max(s.jobs for s in scale):
            ok = r.validate.wall < MAX_VALIDATE_S
            lines.append(
                f"- {'met' if ok else '**MISSED**'}: {r.jobs} jobs validated in "
                f"{r.validate.wall:.2f} s (target < {MAX_VALIDATE_S:g} s)"
            )
            if r.run is not None:
                ok = r.run.peak_rss_mb <= MAX_RUN_MB
                lines.append(
                    f"- {'met' if ok else '**MISSED**'}: run of {r.jobs} jobs peaked at "
                    f"{r.run.peak_rss_mb:.0f} MB (target <= {MAX_RUN_MB} MB)"
                )
    steps = [s for s in _marginal_us_per_job(scale) if s is not None]
    if len(steps) > 1:
        growth = steps[-1] / steps[0]
        lines.append(
            f"- {'met' if growth < 1.5 else '**MISSED**'}: loading linear: each added job costs "
            f"{', then '.join(f'{s:.0f}' for s in steps)} us (last step / first: {growth:.2f})"
        )
    return "\n".join(lines)


def _against_ideal(engine: UtilRow, ideal: UtilRow | None) -> str:
    if ideal is None:
        return ""
    return (
        f"; the ideal client (`bench/ideal.py`) {_ratio(ideal.makespan, ideal.minimum):.3f}"
        f", engine/ideal {_ratio(engine.makespan, ideal.makespan):.3f}"
    )


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


def render(
    command: str,
    util: list[UtilRow],
    over: Overhead | None,
    scale: list[ScaleRow],
    load_at_start: float,
    minutes: float,
    repeats: int = 1,
) -> str:
    load = f"{load_at_start:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    parts = [f"Command: `{command}` ({minutes:.1f} min)", "", f"Machine: {machine()}", "",
             f"Load average (1 min): {load}.", "", "### Targets", "",
             targets(util, over, scale)]  # fmt: skip
    if util:
        parts += ["", "### 1. Limit utilisation", "", utilisation_table(util)]
        if repeats > 1:
            parts += ["", f"Cases whose minimum is 5 s or less: the median of {repeats} runs."]
        parts += ["", "### 2. Against the alternatives", "", baseline_table(util)]
    if over is not None:
        parts += ["", "### 3. Engine overhead (`--rate-limit 100000`, no latency)", ""]
        parts += [overhead_table(over)]
    if scale:
        parts += ["", "### 4. Scale of input (1,000 accounts)", "", scale_table(scale)]
        if repeats > 1:
            parts += ["", f"Validation: the fastest of {repeats} runs per size."]
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
