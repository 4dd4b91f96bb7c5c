"""Baseline (a): the script a user writes without the engine.

aiohttp, one ``aiolimiter.AsyncLimiter(10, 1)`` per key, everything started with
``asyncio.gather``, signed as XT requires, no retries. Run as
``python -m bench.naive PLAIN.json BASE_URL``; prints a JSON tally on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
from aiolimiter import AsyncLimiter

from bench.shapes import FOLLOW_PARAMS
from engine.profiles import V4
from engine.signing import signed_headers

PATH = V4.path


async def follow(
    session: aiohttp.ClientSession, limiter: AsyncLimiter, url: str, job: dict[str, Any]
) -> str:
    body = json.dumps({"leaderOrderId": job["leaderOrderId"], **FOLLOW_PARAMS})
    async with limiter:
        stamp = int(time.time() * 1000)
        headers = signed_headers(job["api_key"], job["secret"], "POST", PATH, body, stamp, 5000)
        headers["Content-Type"] = "application/json"
        try:
            async with session.post(url + PATH, data=body, headers=headers) as response:
                if response.status != 200:
                    return f"HTTP {response.status}"
                answer = await response.json()
                return "ok" if answer.get("rc") == 0 else str(answer.get("mc"))
        except aiohttp.ClientError as exc:
            return type(exc).__name__


async def main(jobs: list[dict[str, Any]], url: str) -> Counter[str]:
    limiters = {job["api_key"]: AsyncLimiter(10, 1) for job in jobs}
    async with aiohttp.ClientSession() as session:
        outcomes = await asyncio.gather(
            *(follow(session, limiters[job["api_key"]], url, job) for job in jobs)
        )
    return Counter(outcomes)


if __name__ == "__main__":
    with open(sys.argv[1]) as file:
        tally = asyncio.run(main(json.load(file), sys.argv[2]))
    print(json.dumps(tally))
