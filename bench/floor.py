"""What aiohttp alone costs a one-window campaign: the floor under any engine built on it.

``python -m bench.floor [--runs 3]`` sends the wide shape (500 keys x 4 jobs, 20 ms) with
scripts that do nothing but send through aiohttp (no limiter, no records, no retries, every
request signed beforehand), in the leanest configurations it offers, each with and without
uvloop when it is installed, interleaved with the ideal client (``bench.ideal``) and with
``import aiohttp`` alone. Their CPU per request against the ideal client's says whether any
configuration of aiohttp could meet a CPU target set against the ideal client.
``python -m bench.floor --client MODE PLAIN.json BASE_URL`` is one such script.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.shapes import FOLLOW_PARAMS, SHAPES, write_shape

#: How each script configures aiohttp. ``new``: a connection per request (no limit, all at
#: once); ``reuse``: aiohttp's default pool of 100, kept alive; ``lean``: that pool without a
#: cookie jar, timeouts, decompression or the automatic headers.
MODES = ("new", "reuse", "lean")


async def _send_all(jobs: list[dict[str, Any]], base_url: str, mode: str) -> Counter[str]:
    import aiohttp

    from engine.profiles import V4
    from engine.signing import signed_headers

    stamp = int(time.time() * 1000)
    requests = []
    for job in jobs:
        body = json.dumps({"leaderOrderId": job["leaderOrderId"], **FOLLOW_PARAMS}).encode()
        headers = signed_headers(
            job["api_key"], job["secret"], "POST", V4.path, body.decode(), stamp, 5000
        )
        requests.append((body, headers | {"Content-Type": "application/json"}))
    lean = mode == "lean"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0 if mode == "new" else 100),
        cookie_jar=aiohttp.DummyCookieJar() if lean else None,
        timeout=aiohttp.ClientTimeout(total=None) if lean else aiohttp.ClientTimeout(total=300),
        auto_decompress=not lean,
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept") if lean else None,
    )
    url = base_url + V4.path

    async def one(body: bytes, headers: dict[str, str]) -> str:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return "ok" if response.status == 200 else f"HTTP {response.status}"

    async with session:
        return Counter(await asyncio.gather(*(one(*request) for request in requests)))


def client(mode: str, plain: Path, base_url: str) -> None:
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    jobs = json.loads(plain.read_text())
    work = _send_all(jobs, base_url, mode.removesuffix("+uvloop"))
    if mode.endswith("+uvloop"):
        import uvloop

        print(json.dumps(uvloop.run(work)))
    else:
        print(json.dumps(asyncio.run(work)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench") / "out" / "floor")
    parser.add_argument("--client", nargs=3, metavar=("MODE", "PLAIN", "BASE_URL"))
    args = parser.parse_args(argv)
    if args.client:
        mode, plain, url = args.client
        client(mode, Path(plain), url)
        return 0
    # The driver's own imports: a script measured must not pay for them.
    from bench.clients import Env
    from bench.measure import run_measured
    from bench.simserver import SimProcess

    modes = [*MODES]
    if importlib.util.find_spec("uvloop") is not None:
        modes += [f"{mode}+uvloop" for mode in MODES]
    files = write_shape(SHAPES["wide"], args.out / "wide")
    env = Env().vars()
    commands = {"ideal": [sys.executable, "-m", "bench.ideal"]}
    commands |= {m: [sys.executable, "-m", "bench.floor", "--client", m] for m in modes}
    cpu: dict[str, list[float]] = {name: [] for name in [*commands, "import aiohttp"]}
    for run in range(args.runs):
        alone = run_measured([sys.executable, "-c", "import aiohttp"], args.out, "import", env=env)
        cpu["import aiohttp"].append(alone.cpu / 2000)
        for name, command in commands.items():
            with SimProcess(files.accounts_json, 0.02, env=env) as sim:
                argv = [*command, str(files.plain_json), sim.url]
                usage = run_measured(argv, args.out, f"{name}-{run}", env=env)
                stats = sim.stats()
            if stats.accepted != 2000:
                raise SystemExit(f"{name}: {stats.accepted} of 2000 accepted: {usage.stderr}")
            cpu[name].append(usage.cpu / stats.arrivals)
    ideal = statistics.median(cpu["ideal"])
    print("| client | CPU us per request (median) | x the ideal client's |")
    print("|---|---|---|")
    for name, values in cpu.items():
        value = statistics.median(values)
        print(f"| {name} | {value * 1e6:.0f} | {value / ideal:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
