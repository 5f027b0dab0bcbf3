"""What the machine is and how busy it was: cores, memory, load, CPU time of the services."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def describe() -> dict[str, object]:
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(total_kb / 1024 / 1024, 1),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def _process_ticks(pid: int, *, with_children: bool = False) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    # After the command: state ppid … utime(12) stime(13) cutime(14) cstime(15), 1-based - 2.
    ticks = int(fields[11]) + int(fields[12])
    if with_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def _children_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(entry.name))
    return found


@dataclass(frozen=True, slots=True)
class CpuSnapshot:
    """Cumulative CPU seconds of the machine and of the broker and database processes."""

    busy_s: float
    total_s: float
    broker_s: float
    database_s: float

    @classmethod
    def take(cls, broker_pid: int | None, postmaster_pid: int | None) -> CpuSnapshot:
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        values = [int(v) for v in first]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])
        broker = _process_ticks(broker_pid) if broker_pid else 0
        database = 0
        if postmaster_pid:
            # Exited backends are counted in the postmaster's children's time once reaped.
            database = _process_ticks(postmaster_pid, with_children=True) + sum(
                _process_ticks(pid) for pid in _children_of(postmaster_pid)
            )
        return cls(
            busy_s=(total - idle) / _TICK,
            total_s=total / _TICK,
            broker_s=broker / _TICK,
            database_s=database / _TICK,
        )

    def since(self, earlier: CpuSnapshot) -> dict[str, float]:
        total = self.total_s - earlier.total_s
        return {
            "machine_busy_share": round((self.busy_s - earlier.busy_s) / total, 3) if total else 0,
            "broker_cpu_s": round(self.broker_s - earlier.broker_s, 2),
            "database_cpu_s": round(self.database_s - earlier.database_s, 2),
        }
