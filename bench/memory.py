"""A benchmark process's own resident memory, now and at its peak (Linux's /proc, elsewhere
ru_maxrss)."""

import os
import resource
import sys


def rss_bytes(peak: bool) -> int:
    """Resident set size now, or its peak so far. On Linux from /proc/self/status (VmRSS, VmHWM):
    ru_maxrss is the same peak but is carried over exec from the parent process, which makes a fresh
    child's peak start at the parent's. Elsewhere ru_maxrss (KiB, bytes on macOS) stands for
    both."""
    if os.path.exists("/proc/self/status"):
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["VmHWM" if peak else "VmRSS"].split()[0]) * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024
