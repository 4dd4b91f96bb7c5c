"""Start-up: how long a person waits for ``follow-engine --help``, ``validate`` and ``schema``.

Each command runs as its user runs it, the console script in a fresh process, in turns with
``python -c pass`` (the bound no command can beat: the interpreter itself) so that all share
the machine's state of the moment; the median of ``runs`` counts. A command's import cost is
its time over ``python -c pass``, in wall time and in CPU time (kernel rusage: steadier on a
shared machine). With a baseline source tree (``--baseline-src``, a checkout of an older
commit) its commands run in the same turns, and each import cost is set against the
baseline's: issue 14 asks for at most a quarter. A floor shows what ``validate`` cannot do
without: click, PyYAML and pydantic, whose first model imports ``importlib.metadata``.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import tables
from bench.clients import REPO, Env
from bench.measure import run_measured
from bench.validate import follow_engine

PASS = "python -c pass"
FLOOR = "floor of validate"
FLOOR_CODE = "import click, yaml, pydantic.main, pydantic.fields, importlib.metadata"
#: The commands measured: a label and the arguments after ``follow-engine``.
COMMANDS = (
    ("--help", ("--help",)),
    ("validate jobs.yaml", ("validate", str(REPO / "jobs.yaml"))),
    ("schema", ("schema",)),
)
THIS, BASELINE = "this tree", "baseline"


@dataclass(frozen=True, slots=True)
class StartupRow:
    command: str
    tree: str
    wall_ms: float
    cpu_ms: float
    #: Import cost: over ``python -c pass`` in the same turns.
    wall_cost_ms: float
    cpu_cost_ms: float
    #: This tree's import costs over the baseline's (wall, CPU), when there is a baseline.
    vs_baseline: tuple[float, float] | None = None


def measure(runs: int, out: Path, env: Env, baseline: Path | None = None) -> list[StartupRow]:
    trees = {THIS: env.vars()}
    if baseline is not None:
        # The baseline's code alone on the path, never this tree's beside it.
        trees[BASELINE] = {**env.vars(), "PYTHONPATH": str(baseline)}
    commands = [
        (PASS, THIS, [sys.executable, "-c", "pass"]),
        (FLOOR, THIS, [sys.executable, "-c", FLOOR_CODE]),
    ]
    commands += [
        (label, tree, [follow_engine(), *args]) for tree in trees for label, args in COMMANDS
    ]
    wall: dict[tuple[str, str], list[float]] = {(label, tree): [] for label, tree, _ in commands}
    cpu: dict[tuple[str, str], list[float]] = {key: [] for key in wall}
    for turn in range(runs):
        for label, tree, command in commands:
            usage = run_measured(command, out / "logs", f"startup-{turn}", env=trees[tree])
            if usage.returncode != 0:
                raise RuntimeError(f"{label} ({tree}) exited {usage.returncode}: {usage.stderr}")
            wall[label, tree].append(usage.wall * 1000)
            cpu[label, tree].append(usage.cpu * 1000)
    median = {key: (statistics.median(wall[key]), statistics.median(cpu[key])) for key in wall}
    bound = median[PASS, THIS]
    cost = {key: (w - bound[0], c - bound[1]) for key, (w, c) in median.items()}
    rows = []
    for label, tree in wall:
        base = cost.get((label, BASELINE))
        mine = cost[label, tree]
        versus = (mine[0] / base[0], mine[1] / base[1]) if base and tree == THIS else None
        rows.append(StartupRow(label, tree, *median[label, tree], *mine, versus))
    return rows


def table(rows: list[StartupRow], runs: int) -> str:
    head = ["command", "tree", "wall ms", "CPU ms", f"wall x `{PASS}`",
            "import cost ms (wall / CPU)", "import cost vs baseline (wall / CPU)"]  # fmt: skip
    cells = []
    for r in rows:
        versus = "-" if r.vs_baseline is None else "**{:.2f}** / **{:.2f}**".format(*r.vs_baseline)
        cells.append([f"`{r.command}`", r.tree, f"{r.wall_ms:.0f}", f"{r.cpu_ms:.0f}",
                      f"{r.wall_ms / (r.wall_ms - r.wall_cost_ms):.2f}",
                      f"{r.wall_cost_ms:.0f} / {r.cpu_cost_ms:.0f}", versus])  # fmt: skip
    note = (
        f"Medians of {runs} runs in turns. Import cost: time over `{PASS}` in the same turns; "
        "vs baseline: this tree's import cost over the baseline tree's (issue 14: at most 0.25). "
        f'The {FLOOR}: `python -c "{FLOOR_CODE}"`, the libraries `validate` cannot do without.'
    )
    return "### Start-up\n\n" + tables.table(head, cells) + "\n\n" + note
