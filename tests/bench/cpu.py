"""CPU time, to tell what the machine allows from what the code spends: the bench process's
own (promptrun's client side) and its PostgreSQL server's (every process of that server,
including the ones it has already reaped), read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def server_seconds(data_dir: Path) -> float:
    """CPU seconds the server whose data directory is `data_dir` has used so far: its
    postmaster (with the children it has reaped) and its live processes. Other servers on
    the machine, other checkouts' among them, are not counted."""
    root = int((data_dir / "postmaster.pid").read_text().split()[0])
    ticks = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # After the command name: state, ppid, ...; utime, stime, cutime, cstime at 11-14.
        fields = stat.rsplit(")", 1)[1].split()
        if int(entry.name) == root:
            ticks += sum(int(f) for f in fields[11:15])
        elif int(fields[1]) == root:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICK


@dataclass(frozen=True)
class Meter:
    """CPU used by this process and by the server between `start()` and `per_job()`."""

    data_dir: Path
    client: float
    server: float

    @classmethod
    def start(cls, data_dir: Path) -> Meter:
        return cls(data_dir, time.process_time(), server_seconds(data_dir))

    def per_job(self, jobs: int) -> tuple[float, float]:
        """(client, server) CPU milliseconds per job since the start."""
        client = time.process_time() - self.client
        server = server_seconds(self.data_dir) - self.server
        return client * 1000 / jobs, server * 1000 / jobs
