"""The RSS (and PSS) of a process and all its descendants, from /proc.

Standard library only, no relative imports: the cold-start process imports it as a top-level
module (see ``cold_start``).
"""

from __future__ import annotations

import os


def tree_memory_kib(root: int | None = None) -> tuple[int, int | None]:
    """(RSS, PSS) in KiB of ``root`` (default: this process) and its descendants; PSS is None
    where /proc/PID/smaps_rollup cannot be read."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    rss = pss = 0
    pss_known = True
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, ()))
        try:
            with open(f"/proc/{pid}/status") as f:
                rss += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            pass
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                pss += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pss_known = False
    return rss, (pss if pss_known else None)
