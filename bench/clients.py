"""The clients compared, each as the command its user would run.

The engine runs as ``follow-engine run`` (its console script, job file defaults: 10/s per key,
2048 in flight, retries on); the baselines run as their own scripts, and so does the ideal client
(``bench.ideal``) on the shapes it applies to. ``baseline`` is the engine of another source tree
(``--baseline-src``, an older commit), run the same way, beside this one: before and after in one
run. All are child processes so each is measured alone (``measure.run_measured``).
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.shapes import ShapeFiles
from bench.validate import follow_engine

REPO = Path(__file__).resolve().parent.parent
ENGINE, NAIVE, CCXT, IDEAL, BASELINE = "engine", "naive", "ccxt", "ideal", "baseline"
#: ``bench.floor``'s leanest script: aiohttp with nothing else (no limiter, no records, every
#: request signed beforehand): the floor under any client built on aiohttp.
AIOHTTP = "aiohttp"
#: The mode of ``bench.floor`` that client runs: kept-alive connections, the cheapest.
AIOHTTP_MODE = "reuse"
CLIENTS = (ENGINE, NAIVE, CCXT)
#: Flags of ``run`` that an older engine may not have; left out where it has not.
NEWER_FLAGS = ("--no-preflight", "--allow-over-limit")


@dataclass(frozen=True, slots=True)
class Env:
    """How child processes run: where they find their code, what the engine is given."""

    #: Run the engine from this source tree instead (a checkout of an older commit).
    engine_src: Path | None = None
    #: Extra ``follow-engine run`` options for every engine run.
    engine_args: tuple[str, ...] = ()
    #: Another source tree of the engine, run as the client ``baseline`` beside this one.
    baseline_src: Path | None = None

    def vars(self) -> dict[str, str]:
        paths = [str(p) for p in (self.engine_src, REPO) if p is not None]
        return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}

    def sim_vars(self) -> dict[str, str]:
        """The simulator's process: always this tree's, whichever engine it serves."""
        return {**os.environ, "PYTHONPATH": str(REPO)}

    def of(self, client: str) -> Env:
        """Where ``client`` runs from: the baseline's tree for ``baseline``."""
        if client.split()[0] == BASELINE:
            assert self.baseline_src is not None, "--baseline-src"
            return Env(self.baseline_src, self.engine_args)
        return self

    def run_flags(self) -> frozenset[str]:
        """The options this tree's ``follow-engine run`` takes."""
        return _run_flags(self.engine_src)


@functools.cache
def _run_flags(engine_src: Path | None) -> frozenset[str]:
    helped = subprocess.run(
        [follow_engine(), "run", "--help"],
        env=Env(engine_src).vars(),
        capture_output=True,
        text=True,
        check=True,
    )
    return frozenset(re.findall(r"--[a-z][a-z-]*", helped.stdout))


def engine_command(
    files: ShapeFiles, url: str, results: Path, *extra: str, env: Env | None = None
) -> list[str]:
    """The engine on a shape's campaign. Without its preflight: one account read each at
    XT's 2/s per IP, which no baseline does and which is not the send path measured here.
    With ``env``, flags its tree's engine does not have yet are left out."""
    jobs, out = str(files.jobs_yaml), str(results)
    argv = [follow_engine(), "run", jobs, "--base-url", url, "--results", out, "--fresh"]
    argv += ["--no-preflight", *extra]
    if env is not None:
        flags = env.run_flags()
        argv = [a for a in argv if a not in NEWER_FLAGS or a in flags]
    return argv


def is_engine(client: str) -> bool:
    return client.split()[0] in (ENGINE, BASELINE)


def command(client: str, files: ShapeFiles, url: str, results: Path, env: Env) -> list[str]:
    """``client`` is one of ``CLIENTS``, or ``engine`` followed by options of its own."""
    if is_engine(client):
        options = shlex.split(client)[1:]
        return engine_command(files, url, results, *env.engine_args, *options, env=env.of(client))
    if client == AIOHTTP:
        floor = [sys.executable, "-m", "bench.floor", "--client", AIOHTTP_MODE]
        return [*floor, str(files.plain_json), url]
    module = {NAIVE: "bench.naive", CCXT: "bench.ccxt_script", IDEAL: "bench.ideal"}[client]
    return [sys.executable, "-m", module, str(files.plain_json), url]
