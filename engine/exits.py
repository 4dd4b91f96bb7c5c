"""Exit codes, the same for every command: a script tells outcomes apart by them alone."""

#: Every job ok; some job failed; invalid input or usage (nothing sent); stopped.
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
