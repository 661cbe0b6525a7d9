"""Wall time of the whole default pipeline: `dvc repro -f` from the repository root, every stage forced.

Time-stamps each stage from DVC's own output ("Running stage ..." to the next lock-file update), then checks that a
second `dvc repro` has nothing to do. Prints the table and writes bench/results/pipeline.md; text below the notes
marker of an existing report is kept. Run it on an otherwise idle machine: other processes on the same cores slow
the 2-thread torch work several times over.

    python bench/bench_pipeline.py
"""
import argparse
import datetime
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_name
from _results import write_keeping_notes

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "pipeline.md"
NOTES = "<!-- notes: kept when the report is regenerated -->"


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)   # --help, nothing else
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = str(Path(sys.executable).parent / "dvc")
    load = os.getloadavg()[0]
    stages, current, t_start = [], None, time.perf_counter()
    proc = subprocess.Popen([dvc, "repro", "-f"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        now = time.perf_counter() - t_start
        m = re.match(r"Running stage '([^']+)'", line)
        if m:
            current = [m.group(1), now, None]
            stages.append(current)
        elif line.startswith("Updating lock file") and current and current[2] is None:
            current[2] = now
    total = time.perf_counter() - t_start
    if proc.wait() != 0: sys.exit("".join(tail) + f"dvc repro -f failed (exit {proc.returncode}); its last lines are above")
    again = subprocess.run([dvc, "repro"], cwd=ROOT, env=env, capture_output=True, text=True).stdout
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6
    rows = [f"| {name} | {(end if end is not None else total) - start:.0f} |" for name, start, end in stages]
    text = "\n".join([
        "# Wall time of the default pipeline (`dvc repro -f`, embedded corpus, CPU size)", "",
        f"Measured {datetime.date.today()} with `python bench/bench_pipeline.py` on {cpu_name()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}; load average at the start {load:.2f}.", "",
        "**Total: %d min %02d s wall**; " % divmod(round(total), 60) + f"largest stage process {rss:.2f} GB resident. "
        f"Second `dvc repro`: {'nothing to do' if 'up to date' in again and 'Running stage' not in again else 'RAN STAGES'}.", "",
        "| stage | wall s (including its papermill kernel start) |", "|---|---|", *rows, ""])
    write_keeping_notes(OUT, text + "\n", NOTES)
    print(text)


if __name__ == "__main__":
    main()
