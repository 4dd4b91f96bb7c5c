"""A valid job file's YAML tree is let go of job by job as the campaign is built; a problem
found midway still gets every message, from the file read again."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from engine import jobfile

HEAD = """\
version: 1
accounts:
  alice: {api_key: k-alice-123456, secret_key: s-alice-123456}
defaults: {followType: RATE, followLossOperate: LEADER_CLOSE, autoFollowSymbol: true,
           symbols: btc_usdt, followVal: 1}
jobs:
"""


def write_jobs(path: Path, count: int, *bad: str) -> Path:
    jobs = [f"  - {{account: alice, leaderOrderId: {n + 1}}}\n" for n in range(count)]
    path.write_text(HEAD + "".join(jobs) + "".join(f"  - {entry}\n" for entry in bad))
    return path


def memory_of_loading(path: Path) -> tuple[int, int]:
    """Bytes the campaign keeps, and the peak while it was loaded."""
    tracemalloc.start()
    try:
        campaign = jobfile.load(path)
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert campaign.jobs
    return kept, peak


def test_the_tree_and_the_campaign_do_not_peak_together(tmp_path: Path) -> None:
    jobfile.load(write_jobs(tmp_path / "warm.yaml", 10))  # imports and caches, off the count
    # What one more job adds: reading the file's bytes costs the same at both sizes.
    small = memory_of_loading(write_jobs(tmp_path / "small.yaml", 10_000))
    large = memory_of_loading(write_jobs(tmp_path / "large.yaml", 30_000))
    kept, peak = (b - a for a, b in zip(small, large, strict=True))
    # Both alive at once, each job's peak was 2.2 times what it keeps; one after the other,
    # 1.5 (the tree and the duplicate-id check still meet).
    assert peak < 1.8 * kept


def test_a_problem_after_jobs_already_built_is_named_as_ever(tmp_path: Path) -> None:
    path = write_jobs(
        tmp_path / "jobs.yaml",
        3,
        "{account: alice, leaderOrderId: 4, followVal: -1}",
        "{account: alice, leaderOrderId: 5, symbols: BTC}",
    )
    with pytest.raises(jobfile.JobFileError) as raised:
        jobfile.load(path)
    assert raised.value.problems == [
        f"{path}:10: job alice:4 (jobs[3]): followVal: must be a number greater than 0",
        f"{path}:11: job alice:5 (jobs[4]): symbols: 'BTC': not a lower-case base_quote pair"
        " such as btc_usdt",
    ]
