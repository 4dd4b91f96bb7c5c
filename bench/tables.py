"""The tables of a bench run, as markdown: one function per section."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import pairwise

from bench.clients import CCXT, ENGINE, IDEAL, NAIVE
from bench.overhead import Overhead
from bench.readpaths import DenseRow, ResumeRow
from bench.scale import ScaleRow
from bench.utilisation import UtilRow


def table(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def f(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


#: Marks a ratio below 1.0: only a client the exchange refused gets one (see the footnote).
REFUSED_MARK = " (refused)"
REFUSED_NOTE = (
    "A ratio marked (refused) belongs to a client the exchange answered 429: it broke the "
    "limit and lost those jobs, so the campaign's bound is not its own; every run is checked "
    "against the bound of the requests the exchange admitted from it, and none was below."
)


def _best(row: UtilRow, makespan: float) -> str:
    value = ratio(makespan, row.sliding_best)
    return f(value, 3) + (REFUSED_MARK if row.stats.violations and value < 1 else "")


def utilisation_table(rows: list[UtilRow]) -> str:
    head = ["shape", "latency", "client", "makespan s", "sliding best s", "vs sliding best",
            "from start s", "from start vs sliding best", "start to 1st arrival s",
            "1st connect to 1st arrival s", "last answer to exit s", "CPU us/request", "429s",
            "violations", "max/key/1s", "failed jobs", "duplicates", "client CPU s"]  # fmt: skip
    return table(
        head,
        (
            [
                f"{r.shape.name} ({r.shape.describe()})",
                f"{r.latency * 1000:g} ms",
                r.client,
                f(r.makespan, 3),
                f(r.sliding_best, 3),
                f"**{_best(r, r.makespan)}**",
                f(r.from_start, 3),
                _best(r, r.from_start),
                f(r.to_first_arrival, 3),
                f(r.connect_to_arrival, 3),
                f(r.exit_after_answer, 3),
                f(r.cpu_per_request_us, 0),
                r.stats.http_429,
                r.stats.violations,
                r.stats.max_in_window,
                r.failed,
                r.stats.duplicates,
                f(r.usage.cpu),
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
        for other in (NAIVE, CCXT, IDEAL):
            base = by.get((shape, latency, other))
            if base is None:
                cells += ["-"] * (2 if other == IDEAL else 3)
                continue
            cells.append(f(ratio(engine.makespan, base.makespan), 3))
            cells.append(f(ratio(engine.from_start, base.from_start), 3))
            if other == IDEAL:
                continue
            tally = ", ".join(f"{k} {v}" for k, v in sorted((base.tally or {}).items()))
            refused = {k: v for k, v in base.stats.codes.items() if k not in ("SUCCESS", "-")}
            said = ", ".join(f"{k} {v}" for k, v in sorted(refused.items()))
            cells.append(
                f"429s {base.stats.http_429}, failed {base.failed}; it counted: {tally}"
                + (f"; the exchange answered: {said}" if said else "")
            )
        out.append(cells)
    head = ["shape", "latency", "engine/naive makespan", "engine/naive from start",
            "naive outcome", "engine/ccxt makespan", "engine/ccxt from start", "ccxt outcome",
            "engine/ideal makespan", "engine/ideal from start"]  # fmt: skip
    return table(head, out)


def overhead_table(o: Overhead) -> str:
    rows = [
        [
            run.requests,
            f"**{run.rate:.0f}**",
            f(run.stats.makespan),
            f(run.run.cpu),
            f(run.run.cpu / run.requests * 1000, 3),
            f(run.stats.cpu),
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
        return [f"{ok}/{r.jobs}", f(r.run.wall), f"**{r.run.peak_rss_mb:.0f}**",
                f(r.results_mb, 1), r.run.returncode]  # fmt: skip

    steps = marginal_us_per_job(rows)
    head = ["jobs", "file MB", "validate s", "validate us/job", "us per added job",
            "validate peak RSS MB", "run: accepted", "run wall s", "run peak RSS MB",
            "results MB", "run exit"]  # fmt: skip
    return table(
        head,
        (
            [
                r.jobs,
                f(r.file_mb, 1),
                f"**{f(r.validate.wall)}**",
                f"{r.validate_us_per_job:.0f}",
                "-" if step is None else f"{step:.0f}",
                f"{r.validate.peak_rss_mb:.0f}",
                *run_cells(r),
            ]
            for r, step in zip(rows, steps, strict=True)
        ),
    )


def marginal_us_per_job(rows: list[ScaleRow]) -> list[float | None]:
    """Validation time per job added since the previous size: start-up cancels out, so a
    loader that is linear shows the same figure at every step."""
    steps: list[float | None] = [None]
    for before, after in pairwise(rows):
        steps.append(
            (after.validate.wall - before.validate.wall) / (after.jobs - before.jobs) * 1e6
        )
    return steps


def read_tables(resume: list[ResumeRow], dense: DenseRow | None) -> str:
    head = ["jobs", "results MB", "resume peak RSS MB", "resume wall s",
            "2 lines/job: results MB", "2 lines/job: resume peak RSS MB",
            "2 lines/job: resume wall s", "the run's own peak RSS MB",
            "validate peak RSS MB", "validate CPU us/job", "dry run CPU us/job",
            "dry run above validate us/job"]  # fmt: skip
    rows = [
        [
            r.jobs,
            f(r.results_mb, 1),
            f"**{r.resume.peak_rss_mb:.0f}**",
            f(r.resume.wall),
            f(r.twice_mb, 1),
            f"**{r.resume_twice.peak_rss_mb:.0f}**",
            f(r.resume_twice.wall),
            "-" if r.run_peak_mb is None else f"{r.run_peak_mb:.0f}",
            f"{r.validate.peak_rss_mb:.0f}",
            f(r.per_job_us(r.validate), 0),
            f(r.per_job_us(r.dry_run), 0),
            f"**{f(r.dry_run_extra_us, 1)}**",
        ]
        for r in resume
    ]
    parts = [table(head, rows)]
    if dense is not None:
        parts += ["", table(
            ["jobs", "file MiB", "validate wall s", "validate CPU s", "peak RSS MB",
             "peak bytes per job"],
            [[dense.jobs, f(dense.file_mb, 1), f(dense.validate.wall, 1),
              f(dense.validate.cpu, 1), f"{dense.validate.peak_rss_mb:.0f}",
              f"**{dense.bytes_per_job:.0f}**"]],
        )]  # fmt: skip
    return "\n".join(parts)
