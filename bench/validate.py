"""``follow-engine validate``, the way a user checks a job file."""

from __future__ import annotations

import sys
from pathlib import Path


def follow_engine() -> str:
    """The console script beside the interpreter running the bench, else the one on PATH."""
    script = Path(sys.executable).parent / "follow-engine"
    return str(script) if script.exists() else "follow-engine"


def validate_command(jobs_yaml: Path) -> list[str]:
    return [follow_engine(), "validate", str(jobs_yaml)]
