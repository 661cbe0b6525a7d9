"""How sharp must a generated mouth be for the judge? LSE of the real test clips after degrading their lower face.

Scores the pipeline's 16 test clips with their own audio, as the evaluation judge of a finished pipeline run sees
them, after each degradation of the lower half of the face box (the part a generator paints):
- `blur σ`: a Gaussian blur of σ pixels (the clips are 160 px; the test clips' face boxes are 64–84 px wide, 73 on
  average, so σ = 1.6 px here is about 1 px of a 48 px crop);
- `via S px`: the face box resized to an S × S crop and back, its lower half pasted (what a perfect generator at crop
  size S gives: `preprocess.img_size` is 48 on the CPU, 96 in the paper);
- `still mouth`: the lower face of the first frame held for the whole clip (no motion at all).
Beside them, the pipeline's own reference rows (real, reference frames copied with another clip's audio) and the
gap closed, as the report computes it. Prints the table and writes bench/results/judge_sharpness.md.

    python bench/bench_judge_sharpness.py [--runs runs] [--threads 2]
"""
import argparse
import datetime
import json
from pathlib import Path

import cv2
import numpy as np
import torch

from attnwav2lip import __version__
from attnwav2lip.evaluate import clip_path, face_region, read_pairs
from attnwav2lip.judge import judge_lse_config, load_judge
from attnwav2lip.lse import lse_scores_av, read_audio_int16, read_video_frames

from _machine import cpu_name
from _results import write_keeping_notes
from bench_learning import gap

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "data" / "synthetic"
NOTES = "<!-- notes: kept when the table is regenerated -->"


def degrade(frames, box, kind:str, value=None):
    "A copy of `frames` (T, H, W, 3) with the lower face of `box` degraded by `kind` ('blur', 'via', 'still')."
    x1, y1, x2, y2 = box
    ym, f = (y1 + y2) // 2, frames.copy()
    if kind == "still": f[:, ym:y2, x1:x2] = frames[0, ym:y2, x1:x2]
    elif kind == "blur":
        for i in range(len(f)): f[i, ym:y2, x1:x2] = cv2.GaussianBlur(frames[i], (0, 0), value)[ym:y2, x1:x2]
    elif kind == "via":
        for i in range(len(f)):
            crop = cv2.resize(frames[i, y1:y2, x1:x2], (value, value), interpolation=cv2.INTER_AREA)
            f[i, ym:y2, x1:x2] = cv2.resize(crop, (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)[ym - y1:]
    else: raise ValueError(f"unknown degradation {kind!r}")
    return f


SETTINGS = [("real, as is", None, None), ("blur σ 1 px", "blur", 1.0), ("blur σ 1.6 px", "blur", 1.6),
            ("blur σ 2 px", "blur", 2.0), ("blur σ 3 px", "blur", 3.0), ("via 96 px", "via", 96),
            ("via 48 px", "via", 48), ("via 32 px", "via", 32), ("still mouth", "still", None)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default=ROOT / "runs", help="a finished pipeline run (judge, test pairs, references)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=ROOT / "bench" / "results" / "judge_sharpness.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = Path(a.runs)
    judge = load_judge(runs / "judge" / "run" / "latest.pth", "cpu")
    view = judge_lse_config(judge)
    ref = json.loads((runs / "eval" / "references" / "metrics.json").read_text())
    scores = {name: [] for name, _, _ in SETTINGS}
    pairs = read_pairs(runs / "eval" / "references" / "pairs.csv")
    for p in pairs:
        video = clip_path(CORPUS, p["video"])
        frames, _ = read_video_frames(video)
        audio = read_audio_int16(video)
        box = face_region(CORPUS, p["video"], frames.shape[1:])
        if box is None: raise ValueError(f"{video}: no face box in its ground truth")
        for name, kind, value in SETTINGS:
            r = lse_scores_av(frames if kind is None else degrade(frames, box, kind, value), audio, judge, view, source=str(video))
            scores[name].append((r["lse_d"], r["lse_c"]))
    lines = ["| lower face of the real clips | LSE-D ↓ | LSE-C ↑ | gap closed, LSE-D | gap closed, LSE-C |", "|---|---|---|---|---|"]
    for name, _, _ in SETTINGS:
        d, c = np.mean(scores[name], 0)
        lines.append(f"| {name} | {d:.2f} | {c:.2f} | {gap(d, ref['copied_lse_d'], ref['real_lse_d']):.2f} | "
                     f"{gap(c, ref['copied_lse_c'], ref['real_lse_c']):.2f} |")
    lines.append(f"| *pipeline: reference frames copied (another clip's audio)* | {ref['copied_lse_d']:.2f} | "
                 f"{ref['copied_lse_c']:.2f} | 0 | 0 |")
    table = "\n".join(lines)
    print(table)
    text = "\n".join([
        "# How sharp must a generated mouth be for the judge?", "",
        f"Measured {datetime.date.today().isoformat()} on {cpu_name()}, {a.threads} threads, torch {torch.__version__}, "
        f"attnwav2lip {__version__}; `python bench/bench_judge_sharpness.py`, with the judge, test pairs and reference "
        f"rows of the pipeline run in `{runs.name}/` (its real / copied LSE-C {ref['real_lse_c']:.2f} / {ref['copied_lse_c']:.2f}).", "",
        "The 16 test clips with their own audio, the lower half of the face box degraded as each row says (means over "
        "the clips). Gap closed is the report's: 0 = the copied-frames baseline, 1 = the real clips as the pipeline scored them.", "",
        table, ""])
    write_keeping_notes(a.out, text + "\n", NOTES)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
