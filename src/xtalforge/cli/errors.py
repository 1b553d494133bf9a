"""One error format and one set of exit codes for every `xtalforge` subcommand.

0 done; 1 a failure while running (a folder that is not a campaign, a damaged store, a campaign
already running, a Ray cluster that cannot be joined, an unexpected error); 2 bad input (the
config, a command-line argument, an input file). Every failure is `error: ...` on stderr, one
line per problem.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def fail(lines: list[str] | str, code: int = EXIT_BAD_INPUT) -> int:
    """Print each problem as `error: <line>` on stderr; returns `code` for the command to exit with."""
    for line in [lines] if isinstance(lines, str) else lines:
        print(f"error: {line}", file=sys.stderr)
    return code
