"""The clients compared, each as the command its user would run.

The engine runs as ``follow-engine run`` (its console script, job file defaults: 10/s per key,
2048 in flight, retries on); the baselines run as their own scripts, and so does the ideal client
(``bench.ideal``) on the shapes it applies to. All are child processes so each is measured
alone (``measure.run_measured``).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.shapes import ShapeFiles
from bench.validate import follow_engine

REPO = Path(__file__).resolve().parent.parent
ENGINE, NAIVE, CCXT, IDEAL = "engine", "naive", "ccxt", "ideal"
CLIENTS = (ENGINE, NAIVE, CCXT)


@dataclass(frozen=True, slots=True)
class Env:
    """How child processes run: where they find their code, what the engine is given."""

    #: Run the engine from this source tree instead (a checkout of an older commit).
    engine_src: Path | None = None
    #: Extra ``follow-engine run`` options for every engine run.
    engine_args: tuple[str, ...] = ()

    def vars(self) -> dict[str, str]:
        paths = [str(p) for p in (self.engine_src, REPO) if p is not None]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def engine_command(files: ShapeFiles, url: str, results: Path, *extra: str) -> list[str]:
    """The engine on a shape's campaign. Without its preflight: one account read each at
    XT's 2/s per IP, which no baseline does and which is not the send path measured here."""
    jobs, out = str(files.jobs_yaml), str(results)
    return [
        follow_engine(),
        "run",
        jobs,
        "--base-url",
        url,
        "--results",
        out,
        "--fresh",
        "--no-preflight",
        *extra,
    ]


def is_engine(client: str) -> bool:
    return client.split()[0] == ENGINE


def command(client: str, files: ShapeFiles, url: str, results: Path, env: Env) -> list[str]:
    """``client`` is one of ``CLIENTS``, or ``engine`` followed by options of its own."""
    if is_engine(client):
        options = shlex.split(client)[1:]
        return engine_command(files, url, results, *env.engine_args, *options)
    module = {NAIVE: "bench.naive", CCXT: "bench.ccxt_script", IDEAL: "bench.ideal"}[client]
    return [sys.executable, "-m", module, str(files.plain_json), url]
