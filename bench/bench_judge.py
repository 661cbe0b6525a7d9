"""Does the evaluation judge learn? Its view (face-track crops / whole frames) × its loss (multi-way / contrastive).

Trains `attnwav2lip.judge.train_judge` with the defaults of `JudgeConfig` (the embedded corpus's `judge` split,
16 speakers no generator sees) changing only the view and the loss, then reports each judge on held-out `test`
clips: LSE-D / LSE-C of the real clips, of the clips with the audio shifted ±6 frames, and of clips with another
clip's audio (swapped); `offset_acc` is the share of real + shifted clips whose AV offset the judge finds exactly
(a collapsed judge finds 0 everywhere: 1/3). Prints the table and writes bench/results/judge.md.

    python bench/bench_judge.py [--steps 1000] [--threads 2] [--only crop/multiway]
"""
import argparse
import datetime
import os
import tempfile
from pathlib import Path

import torch

from attnwav2lip import __version__
from attnwav2lip.judge import JudgeConfig, train_judge

from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"crop/multiway": dict(crop_faces=True, loss="multiway"), "whole/multiway": dict(crop_faces=False, loss="multiway"),
        "crop/contrastive": dict(crop_faces=True, loss="contrastive"),
        "whole/contrastive": dict(crop_faces=False, loss="contrastive")}
COLS = ["train_s", "train_pair_acc", "real_lse_d", "real_lse_c", "shifted_lse_d", "shifted_lse_c", "swapped_lse_d",
        "swapped_lse_c", "real_offset_acc", "shifted_offset_acc", "offset_acc"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=JudgeConfig.steps)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", action="append", choices=list(RUNS), help="run only these (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "judge.md"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.only or RUNS:
            cfg = JudgeConfig(corpus=str(ROOT / "data" / "synthetic"), steps=a.steps, **RUNS[name])
            res = train_judge(cfg, Path(tmp) / name.replace("/", "_"), progress=False)
            rows.append((name, res))
            print(name, " ".join(f"{k}={res[k]:.3g}" for k in COLS), flush=True)
    head = "| view/loss | " + " | ".join(COLS) + " |"
    table = [head, "|" + "---|" * (len(COLS) + 1)]
    table += [f"| {n} | " + " | ".join(f"{r[k]:.3f}" if k != "train_s" else f"{r[k]:.0f}" for k in COLS) + " |" for n, r in rows]
    text = "\n".join([
        "# The evaluation judge: view × loss", "",
        f"Measured {datetime.date.today()} on {cpu_name()}, {a.threads} threads, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, attnwav2lip {__version__}; `python bench/bench_judge.py "
        f"--steps {a.steps}`.", "",
        f"Each judge: `JudgeConfig` defaults (img 64, width 0.125, embed 128, {a.steps} steps, lr 1e-3, the corpus's "
        f"`judge` split) but for view and loss; scored on {rows[0][1]['n_videos']} held-out `test` clips. "
        "`train_s` is wall seconds of the optimisation only; `train_pair_acc` the share of off-sync pairs farther than "
        "their true pair over the last logged steps; offsets must be 0 (real) and ±6 (shifted).", "",
        *table, ""])
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
