"""Campaign shapes and the files every client reads them from.

A shape is how many jobs each API key has. It is written three ways: the YAML job file the
engine reads, ``accounts.json`` (key -> secret) for the simulator, and ``plain.json`` (one
signed-request recipe per job) that the baseline scripts read, as a script author would keep
their jobs. Loading is outside every makespan, so the format costs no client anything there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

BASE_LEADER = 7302994413592166401
RATE_LIMIT = 10.0
WINDOW = 1.0


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    #: Jobs of each key, one entry per key.
    jobs_per_key: tuple[int, ...]

    @classmethod
    def of(cls, name: str, *groups: tuple[int, int]) -> Shape:
        """``Shape.of("skewed", (1, 200), (50, 5))``: groups of (keys, jobs each)."""
        return cls(name, tuple(jobs for keys, jobs in groups for _ in range(keys)))

    @property
    def jobs(self) -> int:
        return sum(self.jobs_per_key)

    @property
    def keys(self) -> int:
        return len(self.jobs_per_key)

    def sliding_best(
        self,
        latency: float,
        rate: float = RATE_LIMIT,
        window: float = WINDOW,
        *,
        per_ip: bool = False,
    ) -> float:
        """The campaign's lower bound (``sliding_best``); under a per-IP limit (``api: v1``)
        all its keys are one."""
        counts = (self.jobs,) if per_ip else self.jobs_per_key
        return sliding_best(counts, latency, rate, window)

    def describe(self) -> str:
        groups: dict[int, int] = {}
        for jobs in self.jobs_per_key:
            groups[jobs] = groups.get(jobs, 0) + 1
        return " + ".join(f"{keys}x{jobs}" for jobs, keys in groups.items())


def sliding_best(
    counts: Iterable[int], latency: float, rate: float = RATE_LIMIT, window: float = WINDOW
) -> float:
    """No client can beat it: a key with ``n`` requests under "at most ``rate`` in any
    ``window``" has its last arrive no sooner than ``ceil(n / rate) - 1`` windows after its
    first, and answered one ``latency`` later. The bound is the largest over the keys
    (``counts``: requests of each limited key)."""
    burst = max(1, math.floor(rate * window))
    busiest = max(counts, default=0)
    return (math.ceil(busiest / burst) - 1) * window + latency if busiest else 0.0


SHAPES = {
    "uniform": Shape.of("uniform", (20, 50)),
    "skewed": Shape.of("skewed", (1, 200), (50, 5)),
    "wide": Shape.of("wide", (500, 4)),
}
TINY = Shape.of("tiny", (2, 3))


@dataclass(frozen=True, slots=True)
class ShapeFiles:
    jobs_yaml: Path
    accounts_json: Path
    plain_json: Path


def write_shape(
    shape: Shape, directory: Path, settings: dict[str, object] | None = None
) -> ShapeFiles:
    """Write the shape's three files into ``directory``; ``settings`` go in the job file."""
    directory.mkdir(parents=True, exist_ok=True)
    width = len(str(shape.keys))
    names = [f"a{i:0{width}d}" for i in range(shape.keys)]
    accounts = {f"bench-key-{n}": f"bench-secret-{n}-s3cr3t" for n in names}
    out = ["version: 1", "base_url: http://127.0.0.1:9", "settings:", "  api: v4"]
    out += [f"  {name}: {value}" for name, value in (settings or {}).items()]
    out.append("accounts:")
    for name, (key, secret) in zip(names, accounts.items(), strict=True):
        upper = name.upper()
        out += [
            f"  {name}:",
            f"    api_key: ${{XT_{upper}_API_KEY:-{key}}}",
            f"    secret_key: ${{XT_{upper}_SECRET_KEY:-{secret}}}",
        ]
    out += [
        "defaults:",
        "  followType: RATE",
        "  followLossOperate: LEADER_CLOSE",
        "  autoFollowSymbol: true",
        "  symbols: [xt_usdt, btc_usdt]",
        "jobs:",
    ]
    plain = []
    leader = BASE_LEADER
    for name, (key, secret), count in zip(names, accounts.items(), shape.jobs_per_key, strict=True):
        for _ in range(count):
            out += [f"  - account: {name}", f"    leaderOrderId: {leader}", "    followVal: 0.5"]
            plain.append(
                {"account": name, "api_key": key, "secret": secret, "leaderOrderId": leader}
            )
            leader += 1
    files = ShapeFiles(
        directory / "jobs.yaml", directory / "accounts.json", directory / "plain.json"
    )
    files.jobs_yaml.write_text("\n".join(out) + "\n")
    files.accounts_json.write_text(json.dumps(accounts))
    files.plain_json.write_text(json.dumps(plain))
    return files


#: The follow parameters besides the leader id, as the job file's defaults give them.
FOLLOW_PARAMS = {
    "followType": "RATE",
    "followVal": 0.5,
    "followLossOperate": "LEADER_CLOSE",
    "autoFollowSymbol": True,
    "symbols": "xt_usdt,btc_usdt",
}
