"""Facts a worker process inherits from the runpool that forked it."""

from __future__ import annotations

import socket

# runpool sets this to its --host before it forks a cluster's workers, so a claimed
# session records which pool host is working on it (busy workers per host).
host_name: str = socket.gethostname()
