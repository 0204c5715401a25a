"""freshctl's exit statuses: the one table scripts rely on (`freshctl --help` and README.md show it).

The statuses, `EXIT_CODES` (the protocol's error codes, freshd.admin.protocol.ErrorCode, mapped to
a status; any other code is 1) and `EXIT_TABLE`, the text --help prints.
"""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_FORBIDDEN, EXIT_UNAVAILABLE = 4, 5, 6, 7
EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 130, 141
# the protocol's error codes (freshd.admin.protocol.ErrorCode) -> exit status; any other code is 1
EXIT_CODES = {"not_found": EXIT_NOT_FOUND, "conflict": EXIT_CONFLICT, "forbidden": EXIT_FORBIDDEN,
              "timeout": EXIT_UNAVAILABLE, "unavailable": EXIT_UNAVAILABLE, "unreachable": EXIT_UNREACHABLE,
              "usage": EXIT_USAGE}
EXIT_TABLE = """exit status:
  0    ok
  1    another error (bad_request, internal, ...), `health` unhealthy, `watch` of a job that failed or was cancelled
  2    usage: bad arguments
  3    freshd is not running, or its socket cannot be reached
  4    not_found
  5    conflict (e.g. the job already ended, the minimum gap between syncs)
  6    forbidden
  7    timeout or unavailable (the daemon, its database or a provider did not answer)
  130  interrupted (Ctrl-C)
  141  stdout was closed early (e.g. `| head`)"""

