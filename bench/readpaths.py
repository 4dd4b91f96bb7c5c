"""The engine's read paths: resuming from a results file, ``run --dry-run``, and what validation
holds per job.

- **Resume**: ``follow-engine run`` on a scale job file whose jobs are all ok in the results
  file sends nothing; its peak RSS is loading the job file plus reading the results. Then the
  same jobs with a failed line before each ok one: twice the file, the same jobs. Both are set
  against the run that sent those jobs (the scale table's).
- **Dry run**: ``run --dry-run`` (stdout to a file) against ``validate`` on the same file, and
  both again on a file of one job per account: the difference of the differences, per job
  added, is preparing (encoding, signing) and printing each request, start-up (which differs:
  a dry run imports the client) taken out.
- **Validation memory**: ``validate``'s peak RSS per job, on the scale files and (``--full``)
  on a job file at the 64 MiB limit with jobs written tersely, about 1.6 million of them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from bench.clients import Env
from bench.measure import Usage, run_measured
from bench.scale import ACCOUNTS, ScaleRow
from bench.shapes import Shape, write_shape
from bench.validate import follow_engine, validate_command
from engine.results import JobResult

#: The largest job file the engine takes (``engine.yamlread.MAX_FILE_BYTES``).
DENSE_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class ResumeRow:
    jobs: int
    validate: Usage
    #: Every job ok, one line each.
    results_mb: float
    resume: Usage
    #: A failed line, then the ok one, for every job.
    twice_mb: float
    resume_twice: Usage
    dry_run: Usage
    #: ``validate`` and ``run --dry-run`` on one job per account, the same accounts.
    base_jobs: int
    base_validate: Usage
    base_dry_run: Usage
    #: The peak of the run that sent these jobs, when the scale section ran it.
    run_peak_mb: float | None

    def per_job_us(self, usage: Usage) -> float:
        return usage.cpu / self.jobs * 1e6

    @property
    def dry_run_extra_us(self) -> float:
        """Dry run's CPU per added job above validation's: preparing and printing each
        request, start-up taken out."""
        if self.jobs == self.base_jobs:
            return float("nan")
        extra = self.dry_run.cpu - self.validate.cpu
        base = self.base_dry_run.cpu - self.base_validate.cpu
        return (extra - base) / (self.jobs - self.base_jobs) * 1e6


@dataclass(frozen=True, slots=True)
class DenseRow:
    jobs: int
    file_mb: float
    validate: Usage

    @property
    def bytes_per_job(self) -> float:
        return self.validate.peak_rss_mb * 2**20 / self.jobs


def _result_line(job: dict[str, object], status: str) -> str:
    ok = status == "ok"
    return JobResult(
        job=f"{job['account']}:{job['leaderOrderId']}",
        account=str(job["account"]),
        leader_field="leaderOrderId",
        leader_id=int(str(job["leaderOrderId"])),
        status="ok" if ok else "failed",
        rc=0 if ok else 1,
        mc="SUCCESS" if ok else "COMMON_002",
        http_status=200,
        attempts=1 if ok else 5,
        error=None if ok else "COMMON_002: the exchange is busy",
        latency_ms=21.3,
        finished_at="2026-11-25T17:05:41.397Z",
        sent_at=("2026-11-25T17:05:41.376Z",),
    ).to_json()


def write_results(plain_json: Path, path: Path, *, failed_first: bool) -> float:
    """Every job of the shape ok (after a failed line each, when ``failed_first``); MB."""
    jobs = json.loads(plain_json.read_text())
    with path.open("w") as file:
        if failed_first:
            file.writelines(_result_line(job, "failed") + "\n" for job in jobs)
        file.writelines(_result_line(job, "ok") + "\n" for job in jobs)
    return path.stat().st_size / 1e6


def write_dense(path: Path, limit: int = DENSE_BYTES) -> int:
    """A valid job file just under ``limit`` bytes, each job its account and leader id only
    (the rest in defaults); returns its number of jobs."""
    head = ["version: 1", "base_url: http://127.0.0.1:9", "accounts:"]
    for i in range(ACCOUNTS):
        key, secret = f"key-{i:03d}-bench", f"s-{i:03d}-bench"
        head += [f"  a{i:03d}:", f"    api_key: {key}", f"    secret_key: {secret}"]
    head += ["defaults:", "  followType: RATE", "  followVal: 0.5",
             "  followLossOperate: LEADER_CLOSE", "  autoFollowSymbol: true",
             "  symbols: [xt_usdt, btc_usdt]", "jobs:"]  # fmt: skip
    parts = ["\n".join(head) + "\n"]
    size, jobs = len(parts[0]), 0
    while True:
        job = f"- account: a{jobs % ACCOUNTS:03d}\n  leaderOrderId: {1_000_000 + jobs}\n"
        if size + len(job) > limit:
            break
        parts.append(job)
        size += len(job)
        jobs += 1
    path.write_text("".join(parts))
    return jobs


def measure_resume(row: ScaleRow, out: Path, env: Env) -> ResumeRow:
    files, name, logs = row.files, f"read-{row.jobs}", out / "logs"
    directory = files.jobs_yaml.parent

    def resume(results: Path) -> Usage:
        # Every job is ok already: nothing is sent, so no exchange is needed.
        argv = [follow_engine(), "run", str(files.jobs_yaml), "--results", str(results)]
        size = results.stat().st_size
        usage = run_measured(argv, logs, f"{name}-{results.stem}", env=env.vars())
        if usage.returncode != 0 or results.stat().st_size != size:
            raise RuntimeError(f"resume of {results} did not skip every job: {usage.stderr}")
        return usage

    once, twice = directory / "resume-ok.jsonl", directory / "resume-twice.jsonl"
    results_mb = write_results(files.plain_json, once, failed_first=False)
    twice_mb = write_results(files.plain_json, twice, failed_first=True)
    ok = resume(once)
    both = resume(twice)
    dry = dry_run(files.jobs_yaml, logs, name, env)
    accounts = min(ACCOUNTS, row.jobs)  # as the scale file has them
    base = write_shape(Shape.of("read-base", (accounts, 1)), out / "read-base")
    base_validate = run_measured(
        validate_command(base.jobs_yaml), logs, "read-base-validate", env=env.vars()
    )
    base_dry = dry_run(base.jobs_yaml, logs, "read-base", env)
    result = ResumeRow(
        row.jobs, row.validate, results_mb, ok, twice_mb, both, dry, accounts, base_validate,
        base_dry, row.run.peak_rss_mb if row.run else None,
    )  # fmt: skip
    print(
        f"  read paths {row.jobs:6} jobs: resume peak RSS {ok.peak_rss_mb:.0f} MB "
        f"({results_mb:.0f} MB of results), {both.peak_rss_mb:.0f} MB ({twice_mb:.0f} MB); "
        f"dry run {result.per_job_us(dry):.0f} us/job, validate "
        f"{result.per_job_us(row.validate):.0f} us/job, the dry run's own "
        f"{result.dry_run_extra_us:.1f} us/job",
        flush=True,
    )
    return result


def dry_run(jobs_yaml: Path, logs: Path, name: str, env: Env) -> Usage:
    argv = [follow_engine(), "run", str(jobs_yaml), "--dry-run"]
    usage = run_measured(argv, logs, f"{name}-dry-run", env=env.vars())
    return dataclasses.replace(usage, stdout="")  # every request printed: kept in the log only


def measure_dense(out: Path, env: Env) -> DenseRow:
    path = out / "dense" / "jobs.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    jobs = write_dense(path)
    usage = run_measured(validate_command(path), out / "logs", "dense-validate", env=env.vars())
    if usage.returncode != 0:
        raise RuntimeError(f"the dense job file did not validate: {usage.stderr[-2000:]}")
    row = DenseRow(jobs, path.stat().st_size / 2**20, usage)
    print(
        f"  validate {jobs} jobs ({row.file_mb:.0f} MiB): {usage.wall:.1f} s, peak RSS "
        f"{usage.peak_rss_mb:.0f} MB, {row.bytes_per_job:.0f} B/job",
        flush=True,
    )
    return row
