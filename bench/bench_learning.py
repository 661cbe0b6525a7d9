"""The learning study: how much of the copied→real gap a generator closes, by training steps, batch, α, β, width and
architecture, for several variants — the evidence behind the generator defaults of `params.yaml`.

Every number is the pipeline's own: generator runs are trained exactly as the `generator` stage trains them
(`attnwav2lip.params` → `train_generator`) and scored exactly as the `evaluate` stage scores them (the judge, the
test pairing, LSE-D / LSE-C), on the crops, expert, judge and references of a finished pipeline run. A run's
checkpoints along the way give the curve over steps. The gap closed is

    (LSE-C(run) − LSE-C(copied)) / (LSE-C(real) − LSE-C(copied))      (and the same with LSE-D, lower is better)

with the real and copied rows of that pipeline run. Each run also keeps its train-L1 curve by wall time, for the
second table: which setting lowers L1 fastest per second of training (beside the L1 of the trivial answer, the
true upper half over the reference frame's lower half).

    python bench/bench_learning.py run NAME --set generator.lr=0.003 --variants none cbam --seeds 0 1 --every 250
    python bench/bench_learning.py run NAME --set expert.steps=4800 …   # expert overrides: the study trains its own expert
    python bench/bench_learning.py run NAME --set preprocess.img_size=24 …   # another crop size: the run's crops resized, its own expert
    python bench/bench_learning.py report          # bench/results/learning.md and learning.png from every run so far
    python bench/bench_learning.py mouths phase1/none-s0@1200 …   # lower faces of scored checkpoints beside the real clip
    python bench/bench_learning.py gaps phase1/none-s0@1200 phase1/none-s1@1200 …   # gap closed with 95 % intervals

`run` appends one JSON line per checkpoint to bench/results/learning.jsonl (a run already there is skipped), with
the run's resolved settings, wall time and machine, so the report can be rebuilt and extended.
"""
import argparse
import dataclasses
import datetime
import json
import multiprocessing as mp
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from _machine import cpu_name
from _results import write_keeping_notes

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
JSONL = RESULTS / "learning.jsonl"
NOTES = "<!-- notes: kept when the report is regenerated -->"


def gap(value, copied, real):
    "Share of the copied → real distance covered by `value` (1 = as good as the real videos)."
    return (value - copied) / (real - copied)


def _job(job):
    "Train one run (one thread; a run folder that exists resumes), then score each of its checkpoints; returns the rows."
    os.chdir(ROOT)   # the params' paths (corpus, ...) are relative to the repository, as in the pipeline
    import torch
    torch.set_num_threads(job["threads"])
    from attnwav2lip.evaluate import evaluate_variant
    from attnwav2lip.params import load_params
    from attnwav2lip.train import train_generator
    runs, out = Path(job["runs"]), Path(job["out"])
    p = load_params(job["params"], job["overrides"])
    model, data, cfg = p.generator_run(job["variant"], job["seed"], runs / "preprocess" / "crops", job["expert"])
    cfg = dataclasses.replace(cfg, ckpt_every=job["every"], keep_checkpoints=0, eval_every=max(cfg.steps, 1))
    t0 = time.perf_counter()
    train_generator(model, data, cfg, out / "run")
    train_s = time.perf_counter() - t0
    logged = [json.loads(l) for l in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r.get("wall_s"), r["l1"]) for r in logged if r["split"] == "train"]
    walls, l1s = {s: w for s, w, _ in curve}, {s: l for s, _, l in curve}
    ref = json.loads((runs / "eval" / "references" / "metrics.json").read_text())
    from attnwav2lip.data import GeneratorDataset
    from attnwav2lip.train import training_datasets
    copy_l1 = copied_l1(training_datasets(GeneratorDataset, model, data, cfg)[1])
    ecfg = dataclasses.replace(p.eval, quality_videos=0)
    rows = []
    for ck in sorted((out / "run").glob("checkpoint_step*.pth")):
        step = int(ck.stem.rsplit("step", 1)[1])
        m = evaluate_variant(ck, runs / "judge" / "run" / "latest.pth", runs / "eval" / "references" / "pairs.csv",
                             out / f"eval{step:06d}", ecfg, progress=False)
        rows.append(dict(name=job["name"], variant=job["variant"], seed=job["seed"], step=step, overrides=job["overrides"],
                         settings=dict(model=dataclasses.asdict(model), generator={k: v for k, v in dataclasses.asdict(cfg).items()
                                                                                  if k not in ("data_root", "expert_checkpoint")}),
                         wall_s=walls.get(step, train_s), l1=l1s.get(step), train_curve=curve, copied_l1=copy_l1, lse_d=m["lse_d"], lse_c=m["lse_c"],
                         gap_c=gap(m["lse_c"], ref["copied_lse_c"], ref["real_lse_c"]),
                         gap_d=gap(m["lse_d"], ref["copied_lse_d"], ref["real_lse_d"]),
                         per_video_lse_c=_per_video(out / f"eval{step:06d}" / "lse"),
                         machine=job["machine"], threads=job["threads"], date=job["date"]))
    return rows


def copied_l1(val_set, n=200) -> float:
    "L1 of the trivial answer on `n` validation windows: the true upper half over the reference frame's lower half."
    from attnwav2lip.models import copied_reference
    out = []
    for i in np.linspace(0, len(val_set) - 1, n).astype(int):
        x, _, _, y = val_set[int(i)]   # x: (6, T, S, S), the masked target (its upper half is y's) and the reference
        guess = copied_reference(x.movedim(1, 0)).movedim(0, 1)
        out.append((guess - y).abs().mean().item())
    return float(np.mean(out))


def _per_video(lse_dir):
    import csv
    return [float(r["lse_c"]) for r in csv.DictReader((Path(lse_dir) / "lse_per_video.csv").open()) if r["status"] == "ok"]


def machine() -> str:
    return f"{cpu_name()}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}"


EXPERT_SECTIONS = ("expert.", "expert_model.", "preprocess.img_size")   # the expert judges crops of that size


def study_expert(args) -> Path:
    "The pipeline run's expert, or, when the setting overrides the expert's sections or the crop size, one trained for the study (once)."
    own = [o for o in args.set if o.startswith(EXPERT_SECTIONS)]
    if not own: return Path(args.runs) / "expert" / "run" / "latest.pth"
    import torch
    from attnwav2lip.params import load_params
    from attnwav2lip.train import train_expert
    run_dir = Path(args.work).resolve() / args.name / "expert" / "run"   # an existing run resumes (a finished one: no steps)
    torch.set_num_threads(args.workers * args.threads)
    os.chdir(ROOT)
    train_expert(*load_params(args.params, own).expert_run(Path(args.runs).resolve() / "preprocess" / "crops"), run_dir)
    return run_dir / "latest.pth"


def run(args):
    done = {(r["name"], r["variant"], r["seed"]) for r in read_rows()}
    stamp = datetime.date.today().isoformat()
    jobs = [dict(name=args.name, variant=v, seed=s, overrides=args.set, every=args.every, params=str(args.params),
                 runs=str(args.runs), out=str(Path(args.work) / args.name / f"{v}-s{s}"), threads=args.threads,
                 machine=machine(), date=stamp)
            for v in args.variants for s in args.seeds if (args.name, v, s) not in done]
    if not jobs: print("every run of this study is recorded already", file=sys.stderr); return
    expert = study_expert(args)
    for j in jobs: j["expert"] = str(expert)
    RESULTS.mkdir(exist_ok=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        for rows in pool.imap_unordered(_job, jobs):
            with JSONL.open("a") as f:
                for r in rows: f.write(json.dumps(r) + "\n")
            print(f"{rows[0]['name']} {rows[0]['variant']}-s{rows[0]['seed']}: " +
                  ", ".join(f"{r['step']}: {r['gap_c']:.2f}/{r['gap_d']:.2f}" for r in rows), file=sys.stderr)


def read_rows():
    return [json.loads(l) for l in JSONL.read_text().splitlines() if l.strip()] if JSONL.is_file() else []


def interval(values, level=0.95):
    "Mean and the half-width of its t interval (0 for a single value)."
    from scipy import stats
    v = np.asarray(values, float)
    if len(v) < 2: return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


WARM_START = re.compile(r"generator\.warm_start=.*/([^/]+)/([a-z0-9]+)-s(\d+)/run/checkpoint_step0*(\d+)\.pth")


def short_override(o:str) -> str:
    "A warm start from a study checkpoint as NAME/VARIANT-s<seed>@STEP (each seed of a row starts from its own)."
    m = WARM_START.fullmatch(o)
    return f"generator.warm_start={m[1]}/{m[2]}-s<seed>@{m[4]}" if m else o


def trained_before(row, rows) -> tuple:
    """(steps, wall s) its warm-start chain trained before a run's first step: (0, 0) from scratch. A base whose
    seconds are not recorded here (a pipeline run's phase 1) counts its steps, and None for the wall time."""
    m = next((m for m in map(WARM_START.fullmatch, row["overrides"]) if m), None)
    if m is None: return 0, 0.0
    step, key = int(m[4]), (m[1], m[2], int(m[3]))
    base = [r for r in rows if (r["name"], r["variant"], r["seed"]) == key]
    curve = train_curves(base).get(key)
    if curve is None: return step, None
    steps, wall = trained_before(base[0], rows)
    if wall is None: return steps + step, None
    own = np.interp(step, [c[0] for c in curve[1]], [c[1] for c in curve[1]])
    return steps + step, wall + float(own)


def report(args):
    rows = read_rows()
    if not rows: sys.exit(f"{JSONL}: no runs yet (bench_learning.py run …)")
    groups = {}
    for r in rows: groups.setdefault((r["name"], r["variant"], r["step"]), []).append(r)
    lines = ["# The learning study: gap closed by the generators", "",
             f"Produced by `python bench/bench_learning.py` ({len(rows)} checkpoints of "
             f"{len({(r['name'], r['variant'], r['seed']) for r in rows})} runs; machine: {rows[-1]['machine']}). "
             "Gap closed = (LSE(run) − LSE(copied)) / (LSE(real) − LSE(copied)), on the pipeline's 16 test pairs, scored by "
             "its judge; mean ± 95 % t-interval over seeds where a setting has several (one seed: the value alone).", "",
             "`step` counts from the run's own start, `in all` adds what its warm-start chain trained before it (a phase 2 on "
             "top of its phase 1), as the figure's step axis does.", "",
             "| study | overrides | variant | step | in all | seeds | gap closed, LSE-C | gap closed, LSE-D | LSE-C | LSE-D | train wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (name, variant, step), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        c, cw = interval([r["gap_c"] for r in rs]); d, dw = interval([r["gap_d"] for r in rs])
        lc, _ = interval([r["lse_c"] for r in rs]); ld, _ = interval([r["lse_d"] for r in rs])
        pm = lambda m, w: f"{m:.2f}" + (f" ± {w:.2f}" if len(rs) > 1 else "")
        lines.append(f"| {name} | {' '.join(map(short_override, rs[0]['overrides'])) or '–'} | {variant} | {step} | "
                     f"{step + trained_before(rs[0], rows)[0]} | {len(rs)} | {pm(c, cw)} | "
                     f"{pm(d, dw)} | {lc:.2f} | {ld:.2f} | {np.mean([r['wall_s'] or 0 for r in rs]):.0f} |")
    lines += ["", *recipe_table(rows)]
    path = RESULTS / "learning.md"
    write_keeping_notes(path, "\n".join(lines) + "\n\n![gap closed by steps](learning.png)\n\nSteps and wall time in the figure count "
                        "from scratch: a warm-started run (a phase 2) is drawn from the end of its base's steps and seconds "
                        "(the L1 panel leaves out a run whose base's seconds are not recorded here: a pipeline run's phase 1).\n\n", NOTES)
    figure(groups, RESULTS / "learning.png", rows)
    print(f"wrote {path}", file=sys.stderr)


def recorded_copied_l1(rows):
    "The trivial answer's L1 as the runs recorded it (None before runs recorded it)."
    return next((r["copied_l1"] for r in rows if "copied_l1" in r), None)


def train_curves(rows) -> dict:
    "{(name, variant, seed): (overrides, train curve [(step, wall s, L1)], last scored row)} of the runs that logged one."
    out = {}
    for r in sorted(rows, key=lambda r: r["step"]):
        if r.get("train_curve"): out[(r["name"], r["variant"], r["seed"])] = (r["overrides"], r["train_curve"], r)
    return out


def l1_at(curve, wall_s):
    "Train L1 after `wall_s` seconds of training, interpolated between logged steps (None past the run's end)."
    w, l = np.array([c[1] for c in curve], float), np.array([c[2] for c in curve], float)
    return float(np.interp(wall_s, w, l)) if w[0] <= wall_s <= w[-1] else None


RECIPE_WALL_S = 150   # the budget at which the recipe table compares settings: what every recipe run trained past


def recipe_table(rows) -> list:
    "Markdown lines: how fast each setting's train L1 falls per second of training, beside its last gap closed."
    cs = train_curves(rows)
    if not cs: return []
    copy = recorded_copied_l1(rows)
    out = ["## Which recipe learns fastest per second (train L1)", "",
           f"Each setting's generator L1 (training batches, logged every 50 steps) after {RECIPE_WALL_S} s of training, "
           "interpolated, and at its last logged step; runs of one setting were trained two at a time, one thread each, "
           "as the pipeline's workers do. The trivial answer — the true upper half over the reference frame's lower half — "
           f"scores L1 {copy:.4f} on the validation windows.", "",
           f"| study | overrides | variant | seed | L1 at {RECIPE_WALL_S} s | steps | wall s | L1 at the end | gap closed at the end, LSE-C / LSE-D |",
           "|---|---|---|---|---|---|---|---|---|"]
    for (name, variant, seed), (ov, curve, last) in sorted(cs.items()):
        at = l1_at(curve, RECIPE_WALL_S)
        out.append(f"| {name} | {' '.join(map(short_override, ov)) or '–'} | {variant} | {seed} | {'–' if at is None else f'{at:.4f}'} | {curve[-1][0]} | "
                   f"{curve[-1][1]:.0f} | {curve[-1][2]:.4f} | {last['gap_c']:.2f} / {last['gap_d']:.2f} (step {last['step']}) |")
    return out


def figure(groups, path, rows=()):
    "Gap closed by step (mean over seeds; the intervals are in the table) and train L1 by wall time, one style per setting."
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cs = train_curves(rows)
    curves = {}
    for (name, variant, step), rs in groups.items(): curves.setdefault((name, variant), []).append((step, rs))
    keys = sorted(set(curves) | {(n, v) for n, v, _ in cs})
    colours = plt.get_cmap("tab20").colors
    style = {k: dict(color=colours[i % 20], ls=("-", "--", ":", "-.")[i // 20 % 4]) for i, k in enumerate(keys)}
    ncol = 4
    legend_h = 0.17 * -(-len(keys) // ncol) + 0.3
    fig, axes = plt.subplots(1, 3 if cs else 2, figsize=(20 if cs else 13, 5.5 + legend_h))
    for key, pts in sorted(curves.items()):
        pts.sort()
        before = trained_before(pts[0][1][0], rows)[0]
        for ax, metric in zip(axes, ("gap_c", "gap_d")):
            ax.plot([before + s for s, _ in pts], [np.mean([r[metric] for r in rs]) for _, rs in pts], marker="o", ms=3,
                    label=" / ".join(key), **style[key])
    import yaml
    default_steps = yaml.safe_load((ROOT / "params.yaml").read_text())["generator"]["steps"]
    for ax, t in zip(axes, ("LSE-C", "LSE-D")):
        ax.axhline(0, c="grey", lw=0.8); ax.axhline(0.6, c="k", ls=":", lw=0.8)
        ax.axvline(default_steps, c="grey", ls="--", lw=0.8)
        ax.text(default_steps, ax.get_ylim()[1], f" params.yaml: {default_steps} steps", fontsize=7, va="top", color="grey")
        ax.set_xscale("symlog", linthresh=1000)
        ax.set_xlabel("training steps from scratch (linear to 1000, log beyond)"); ax.set_ylabel(f"gap closed ({t})")
        ax.set_title(f"{t}: copied = 0, real = 1 (mean over seeds; dotted: 0.6)")
    if cs:
        for (name, variant, seed), (ov, curve, last) in sorted(cs.items()):
            before = trained_before(last, rows)[1]
            if before is None: continue   # its base's wall time is not recorded
            axes[2].plot([before + c[1] for c in curve], [c[2] for c in curve], lw=1, **style[(name, variant)])
        copy = recorded_copied_l1(rows)
        if copy: axes[2].axhline(copy, c="k", ls=":", lw=0.8)
        axes[2].axvline(RECIPE_WALL_S, c="grey", ls="--", lw=0.8)
        axes[2].set_xscale("symlog", linthresh=1000)
        axes[2].set_xlabel("training wall s from scratch, two runs at a time (linear to 1000, log beyond)"); axes[2].set_ylabel("train L1")
        axes[2].set_title("train L1, one line per seed (dotted: reference copied)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=ncol, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, legend_h / (5.5 + legend_h), 1, 1)); fig.savefig(path, dpi=110)


def scored(work, spec:str, *parts) -> Path:
    "A file of the evaluation of study checkpoint `spec` (NAME/VARIANT-sSEED@STEP); exits when it was not scored."
    run, _, step = spec.partition("@")
    path = Path(work, run, f"eval{int(step):06d}", *parts)
    if not path.is_file(): sys.exit(f"{path}: no scored checkpoint {spec} (bench_learning.py run … first)")
    return path


def mouths(args):
    "Lower faces of the first test pair's generated video at each named checkpoint, under the real clip's own frames."
    from attnwav2lip.evaluate import clip_path, face_region, read_pairs
    from attnwav2lip.lse import read_video_frames
    from attnwav2lip.report import lower_face_strip
    corpus = ROOT / "data" / "synthetic"
    pair = read_pairs(Path(args.runs) / "eval" / "references" / "pairs.csv")[0]
    real, _ = read_video_frames(clip_path(corpus, pair["video"]))
    rows = {f"real ({pair['video']})": real}
    for spec in args.checkpoints:
        rows[spec] = read_video_frames(scored(args.work, spec, "paired", f"{pair['index']:04d}.mp4"))[0]
    path = lower_face_strip(rows, face_region(corpus, pair["video"], real.shape[1:]), RESULTS / args.out,
                            f"lower face: the real clip, then each checkpoint lip-syncing it to {pair['audio']}'s speech", args.frames)
    print(f"wrote {path}", file=sys.stderr)


def gaps(args):
    "Gap closed of scored checkpoints with the report's 95 % intervals (hierarchical bootstrap over seeds and the test videos)."
    from attnwav2lip.report import COPIED, REAL, lse_intervals, read_lse_scores
    refs = Path(args.runs) / "eval" / "references"
    groups = {}
    for spec in args.checkpoints:   # the seeds of one NAME/VARIANT@STEP are pooled
        run, _, step = spec.partition("@")
        groups.setdefault(f"{run.rsplit('-s', 1)[0]}@{step}", []).append(
            read_lse_scores(scored(args.work, spec, "lse", "lse_per_video.csv")))
    real, copied = (read_lse_scores(refs / k / "lse" / "lse_per_video.csv") for k in ("real", "copied"))
    print("| checkpoint | seeds | gap closed, LSE-C [95 %] | gap closed, LSE-D [95 %] |\n|---|---|---|---|")
    for label, runs in groups.items():
        videos = sorted(set(real) & set(copied) & set.intersection(*(set(r) for r in runs)))
        scores = {REAL: np.array([[real[v] for v in videos]]), COPIED: np.array([[copied[v] for v in videos]]),
                  label: np.array([[r[v] for v in videos] for r in runs])}
        g = lse_intervals(scores)["gap"][label]
        cell = lambda k: f"{g[k]:.2f} [{g[k + '_ci'][0]:.2f}, {g[k + '_ci'][1]:.2f}]"
        print(f"| {label} | {len(runs)} | {cell('lse_c')} | {cell('lse_d')} |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and score one study setting")
    r.add_argument("name", help="the setting's name in the report")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="params overrides of the setting")
    r.add_argument("--variants", nargs="+", default=["none", "cbam"])
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--every", type=int, default=250, help="steps between scored checkpoints")
    r.add_argument("--params", default=ROOT / "params.yaml")
    r.add_argument("--runs", default=ROOT / "runs", help="a finished pipeline run (crops, expert, judge, references)")
    r.add_argument("--work", default="/tmp/attnwav2lip-learning", help="where the study's runs are trained")
    r.add_argument("--workers", type=int, default=2, help="runs trained at once (one process each)")
    r.add_argument("--threads", type=int, default=1, help="torch threads per run")
    sub.add_parser("report", help="write bench/results/learning.md from every recorded run")
    m = sub.add_parser("mouths", help="a strip of generated lower faces of scored checkpoints beside the real clip")
    m.add_argument("checkpoints", nargs="+", metavar="NAME/VARIANT-sSEED@STEP")
    m.add_argument("--runs", default=ROOT / "runs", help="the pipeline run the checkpoints were scored against")
    m.add_argument("--work", default="/tmp/attnwav2lip-learning")
    m.add_argument("--frames", type=int, default=8)
    m.add_argument("--out", default="learning_mouths.png", help="file name under bench/results/")
    g = sub.add_parser("gaps", help="gap closed of scored checkpoints with 95 %% intervals over seeds and test videos")
    g.add_argument("checkpoints", nargs="+", metavar="NAME/VARIANT-sSEED@STEP")
    g.add_argument("--runs", default=ROOT / "runs", help="the pipeline run the checkpoints were scored against")
    g.add_argument("--work", default="/tmp/attnwav2lip-learning")
    a = ap.parse_args(argv)
    {"run": run, "report": report, "mouths": mouths, "gaps": gaps}[a.cmd](a)


if __name__ == "__main__":
    main()
