"""CPU time from /proc: of one process, of this process, of the whole machine."""

from __future__ import annotations

import os
import resource
import time

__all__ = ["busy_cpus", "machine_seconds", "own_seconds", "process_seconds"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    """utime + stime of a whole process (every thread), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_seconds() -> float:
    """CPU time every process of the machine has used, from /proc/stat.

    What the server and the client did not use of it was someone else's:
    a benchmark sharing the machine with another job reports how much.
    """
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(
            int, stat.readline().split()[1:9]
        )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def busy_cpus(seconds: float = 1.0) -> float:
    """How many CPUs' worth the machine used over the next ``seconds`` (blocks)."""
    start, used = time.perf_counter(), machine_seconds()
    time.sleep(seconds)
    return (machine_seconds() - used) / (time.perf_counter() - start)
