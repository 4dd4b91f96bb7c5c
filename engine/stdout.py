"""Standard output that its reader may close early (``run ... | head -1``).

What it can no longer take is dropped and the command runs on to its own exit code: a
closed pipe must neither stop a run nor turn "every job ok" into exit 1.
"""

from __future__ import annotations

import io
import os
from typing import TextIO


class PipeSafeStdout(io.TextIOBase):
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
                self._stream.flush()
            except BrokenPipeError:
                self._gone = True
                # The interpreter flushes stdout at exit: give it somewhere to go.
                os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())
        return len(text)

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding
