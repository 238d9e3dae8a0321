"""What /proc says about a process: CPU time and memory, sampled around a measurement window."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of a process: wall clock, CPU seconds (all threads), memory in kB."""

    wall: float
    cpu_seconds: float
    rss_kb: int
    hwm_kb: int


def _status_kb(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def sample(pid: int) -> Sample:
    """Read utime+stime from /proc/PID/stat and VmRSS/VmHWM from /proc/PID/status."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        raw = stat.read()
    # The command name (field 2) may hold spaces; the fields we want follow its closing paren.
    fields = raw[raw.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    rss, hwm = _status_kb(pid)
    return Sample(time.monotonic(), (utime + stime) / CLOCK_TICKS, rss, hwm)


def cpu_percent(start: Sample, end: Sample) -> float | None:
    """CPU used between two samples, in percent of one core."""
    wall = end.wall - start.wall
    if wall <= 0:
        return None
    return round(100.0 * (end.cpu_seconds - start.cpu_seconds) / wall, 1)
