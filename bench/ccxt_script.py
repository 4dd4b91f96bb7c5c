"""Baseline (b): the ccxt script a user writes.

One ``ccxt.async_support.xt`` per account with ``enableRateLimit`` (ccxt's own pacing for xt,
untuned), its spot URL pointed at the simulator, every job sent with
``exchange.request('account/copy-trade/follow', ['private', 'spot'], 'POST', params)`` and
started with ``asyncio.gather``. Run as ``python -m bench.ccxt_script PLAIN.json BASE_URL``;
prints a JSON tally on stdout, exceptions counted by class.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from typing import Any

import ccxt.async_support as ccxt

from bench.shapes import FOLLOW_PARAMS


async def follow(exchange: ccxt.xt, job: dict[str, Any]) -> str:
    params = {"leaderOrderId": job["leaderOrderId"], **FOLLOW_PARAMS}
    try:
        answer = await exchange.request(
            "account/copy-trade/follow", ["private", "spot"], "POST", params
        )
    except ccxt.BaseError as exc:
        return type(exc).__name__
    return "ok" if answer.get("rc") == 0 else str(answer.get("mc"))


async def main(jobs: list[dict[str, Any]], url: str) -> Counter[str]:
    exchanges: dict[str, ccxt.xt] = {}
    for job in jobs:
        if job["api_key"] not in exchanges:
            exchange = ccxt.xt(
                {"apiKey": job["api_key"], "secret": job["secret"], "enableRateLimit": True}
            )
            exchange.urls["api"]["spot"] = url
            exchanges[job["api_key"]] = exchange
    try:
        outcomes = await asyncio.gather(*(follow(exchanges[job["api_key"]], job) for job in jobs))
    finally:
        await asyncio.gather(*(exchange.close() for exchange in exchanges.values()))
    return Counter(outcomes)


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        tally = asyncio.run(main(json.load(file), sys.argv[2]))
    print(json.dumps(tally))
