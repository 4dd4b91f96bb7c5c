"""Room for a run's connections: every request in flight holds one, and each is an open file."""

from __future__ import annotations

import resource

#: Open files a run needs besides its connections: standard streams, the results file,
#: the event loop's own, the simulator's listening socket.
SPARE_FILES = 64


def fit_open_files(concurrency: int, per_request: int = 1) -> tuple[int, str | None]:
    """The concurrency this process can hold open, and a warning when it is less than asked.

    Every request in flight holds a connection, so the open-files soft limit (often 1024)
    is raised towards the hard one as far as needed. Where even that is too low the run
    goes on with fewer requests in flight rather than fail to connect once it runs out.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = SPARE_FILES + concurrency * per_request
    if soft == resource.RLIM_INFINITY or soft >= need:
        return concurrency, None
    raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    except (ValueError, OSError):  # macOS: not above kern.maxfilesperproc, whatever the hard
        raised = soft
    if raised >= need:
        return concurrency, None
    fits = max(1, (raised - SPARE_FILES) // per_request)
    return fits, (
        f"warning: {fits} requests in flight at most instead of {concurrency}: this process "
        f"may open {raised} files (ulimit -n); raise the limit to run {concurrency}"
    )
