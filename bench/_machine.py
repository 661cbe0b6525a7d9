"""What the benchmarks say about the machine they ran on (imported by the bench scripts, which run as `python bench/X.py`)."""
import platform
from pathlib import Path


def cpu_name() -> str:
    "The CPU model from /proc/cpuinfo, else what `platform` knows."
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()
