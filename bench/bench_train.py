"""Training benchmarks: throughput of the training steps, and the learned-sync evidence at CPU scale.

throughput — s/step and samples/s of one full optimisation step, per attention variant, at the paper size and the CPU
size, through the trainers' own `train_step` (expert: BCE step; generator: L1 + α·L_sync + β·L_gen step of G plus the
discriminator step). Inputs are fixed random batches, so data loading is not timed (see the data notebook for it).
Variants are timed in turns (round-robin), warm-up rounds first, then the median of `--repeats` rounds.

    python bench/bench_train.py throughput              # writes bench/results/training_throughput.md

learning — does it learn? Trains the lip-sync expert, a second SyncNet as an independent judge (on the corpus's
`judge.txt` speakers when there is one), and the generator variants on a preprocessed corpus (the embedded synthetic
corpus at 48 px) within minutes; then measures on the held-out test split (speakers never seen in training): the
experts' accuracy, and for each generator the sync probability of generated windows, judged by both, against the
ground truth, the reference frames copied as the output, and the generator fed shifted (another window's) audio.

    python bench/bench_train.py learning --data runs/preprocessed   # writes bench/results/training.md
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnwav2lip.data import DataConfig, GeneratorDataset, SyncDataset, write_toy_corpus
from attnwav2lip.models import VARIANTS, AttnWav2Lip, ModelConfig, load_checkpoint_weights
from attnwav2lip.train import (ExpertTrainConfig, ExpertTrainer, GeneratorTrainConfig, GeneratorTrainer, Runtime,
                               evaluate_expert, evaluate_generator, filelist_path, load_expert, save_checkpoint,
                               setup_runtime, train_expert, train_generator)

from _machine import cpu_name

RESULTS = Path(__file__).parent / "results"
NOTES = "<!-- notes: kept when the report is regenerated -->"
T = 5
SIZES = [  # (label, expert model, generator model without the variant, expert batch, generator batch)
    ("paper: 96 px, width 1", dict(img_size=96, width=1.0), dict(img_size=96, width=1.0), 8, 2),
    ("CPU recipe: 48 px, expert width 0.125, generator width 0.25", dict(img_size=48, width=0.125),
     dict(img_size=48, width=0.25), 64, 8),
]


def machine(threads) -> str:
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()}, {os.cpu_count()} logical CPUs"
    return (f"{dev}; Python {platform.python_version()}, torch {torch.__version__}; "
            f"`torch.set_num_threads({threads})`; load average {os.getloadavg()[0]:.2f} at the end")


def write_report(path:Path, text:str):
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f: f.write(text)
    os.replace(f.name, path)
    print(f"wrote {path}", file=sys.stderr)


def no_guard(**losses): pass


# ------------------------------------------------------------------------------------------------ throughput

def trainers_for(expert_size:dict, gen_size:dict, root:Path, expert_b:int, gen_b:int, rt:Runtime):
    "An expert trainer and one generator trainer per variant, on a toy corpus (only to satisfy the constructors)."
    S = gen_size["img_size"]
    data = DataConfig(img_size=S)
    loop = dict(data_root=str(root), device=str(rt.device), steps=1)
    expert = ExpertTrainer(ModelConfig(**expert_size), data, ExpertTrainConfig(batch_size=expert_b, **loop), rt, root)
    ckpt = root / f"expert{S}"
    ckpt.mkdir(exist_ok=True)
    save_checkpoint({"state_dict": expert.model.state_dict(), "global_step": 0,
                     "config": {"model": ModelConfig(**expert_size).to_dict()}}, ckpt)
    gcfg = GeneratorTrainConfig(batch_size=gen_b, expert_checkpoint=str(ckpt / "latest.pth"), alpha_schedule="fixed", **loop)
    gens = {v: GeneratorTrainer(ModelConfig(attention=v, **gen_size), data, gcfg, rt, root) for v in VARIANTS}
    no_gan = GeneratorTrainConfig(**{**gcfg.__dict__, "beta": 0.0})
    gens["none, β = 0"] = GeneratorTrainer(ModelConfig(**gen_size), data, no_gan, rt, root)
    d = rt.device
    expert_batch = (torch.rand(expert_b, 3 * T, S // 2, S, device=d), torch.randn(expert_b, 1, 80, 16, device=d),
                    (torch.rand(expert_b, 1, device=d) > 0.5).float())
    gen_batch = (torch.rand(gen_b, 6, T, S, S, device=d), torch.randn(gen_b, T, 1, 80, 16, device=d),
                 torch.randn(gen_b, 1, 80, 16, device=d), torch.rand(gen_b, 3, T, S, S, device=d))
    return expert, expert_batch, gens, gen_batch


def timed(fn, rt) -> float:
    if rt.device.type == "cuda": torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if rt.device.type == "cuda": torch.cuda.synchronize()
    return time.perf_counter() - t


def throughput(args):
    rt = setup_runtime(args.device, args.amp)
    rows, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for label, expert_size, gen_size, expert_b, gen_b in SIZES:
            if args.only_cpu_size and gen_size["img_size"] == 96: continue
            write_toy_corpus(root, {f"spk{i}/00001": 20 for i in range(2)}, size=gen_size["img_size"])
            (root / "train.txt").write_text("spk0/00001\n"); (root / "val.txt").write_text("spk1/00001\n")
            torch.manual_seed(0)
            expert, eb, gens, gb = trainers_for(expert_size, gen_size, root, expert_b, gen_b, rt)
            jobs = {"expert": lambda: expert.train_step(eb, no_guard)}
            jobs.update({f"generator {v}": (lambda g=g: g.train_step(gb, no_guard)) for v, g in gens.items()})
            times = {k: [] for k in jobs}
            for r in range(args.warmup + args.repeats):
                for k, fn in jobs.items():
                    t = timed(fn, rt)
                    if r >= args.warmup: times[k].append(t)
                print(f"  {label}: round {r + 1}/{args.warmup + args.repeats}", file=sys.stderr)
            params = {"expert": sum(p.numel() for p in expert.model.parameters())}
            params.update({f"generator {v}": sum(p.numel() for p in g.model.parameters()) for v, g in gens.items()})
            base = statistics.median(times["generator none"])
            for k, ts in times.items():
                med, b = statistics.median(ts), expert_b if k == "expert" else gen_b
                rel = f"{med / base:.2f}×" if k != "expert" else "–"
                rows.append(f"| {label} | {k} | {params[k]:,} | {b} | {med:.3f} | {b / med:.1f} | {rel} | "
                            f"{', '.join(f'{t:.3f}' for t in ts)} |")
            del expert, gens
    body = "\n".join(["| size | network | parameters | batch (windows) | s/step | windows/s | vs Wav2Lip | all timed steps (s) |",
                      "|---|---|---|---|---|---|---|---|", *rows])
    print(body)
    write_report(Path(args.out or RESULTS / "training_throughput.md"), f"""# Training throughput

Produced by `python bench/bench_train.py throughput` ({datetime.date.today().isoformat()},
{(time.perf_counter() - started) / 60:.1f} min) on {rt.device.type.upper()}{f' ({rt.amp_dtype})' if rt.amp_dtype else ' (float32)'}.

- machine: {machine(args.threads)}.
- one step = what the trainers do per batch: **expert** — forward, BCE on the cosine similarity, backward, Adam;
  **generator** — G forward, (1 − α − β)·L1 + α·L_sync (frozen expert, eval mode) + β·L_gen (α = 0.03, β = 0.07),
  backward, Adam; then the discriminator's forward on real + generated lower halves, backward, Adam (the row
  "none, β = 0" is the no-GAN recipe: no L_gen, no discriminator step). A window is
  T = 5 frames (the expert sees one window per sample as 15 stacked lower halves).
- random input batches (data loading not included); warm-up rounds: {args.warmup}, then the median of {args.repeats}
  rounds; the variants are timed in turns so that load changes hit them alike. "vs Wav2Lip" is relative to the
  `none` generator in the same run. The machine is shared: compare rows of one table only.
- The paper trains with batch 80 on a GPU; on this CPU the paper-size batch is kept tiny to bound the run. The CPU
  rows use the CPU recipe of `training.md` (expert batch 64, generator batch 8).

{body}
""")


# ------------------------------------------------------------------------------------------------ learning

def learn_expert(args, seed, train_list, run):
    "One expert at CPU scale; returns its wall time."
    t = time.perf_counter()
    cfg = ExpertTrainConfig(batch_size=64, steps=args.expert_steps, lr=args.expert_lr, seed=seed, log_every=50,
                            eval_every=max(1, args.expert_steps // 4), eval_batches=4, ckpt_every=args.expert_steps,
                            stuck_after=args.expert_steps, data_root=args.data, train_list=train_list, device="cpu")
    train_expert(ModelConfig(img_size=48, width=args.expert_width), DataConfig(img_size=48, cache_frames=True, seed=seed),
                 cfg, run)
    return time.perf_counter() - t


def learning(args):
    torch.set_num_threads(args.threads)
    runs, t0, rt = Path(args.runs), time.perf_counter(), Runtime(torch.device("cpu"))
    test_data = DataConfig(img_size=48, cache_frames=True, seed=12345)     # test windows drawn with their own seed
    test = lambda cls: cls(args.data, filelist_path(ExpertTrainConfig(data_root=args.data), "test"), test_data)
    walls, experts = {}, {}
    try: judge_list = filelist_path(ExpertTrainConfig(data_root=args.data, train_list="judge"), "judge").stem
    except FileNotFoundError: judge_list = "train"   # no judge split: same data, other seeds
    args.judge_list = judge_list
    for name, seed, split in (("expert", 0, "train"), ("judge", 1, judge_list)):
        walls[name] = learn_expert(args, seed, split, runs / name)
        experts[name] = load_expert(runs / name / "latest.pth")
    sync_test = test(SyncDataset)
    e_test = {k: evaluate_expert(m, sync_test, args.test_windows // 64, 64, rt) for k, m in experts.items()}
    print("experts on test:", e_test, walls, file=sys.stderr)
    gen_test, gens = test(GeneratorDataset), {}
    recipes = [(v, args.alpha) for v in args.variants] + ([("none", 0.0)] if args.l1_control else [])
    for v, alpha in recipes:
        for seed in args.seeds:
            t = time.perf_counter()
            gcfg = GeneratorTrainConfig(batch_size=args.gen_batch, steps=args.gen_steps, lr=args.gen_lr, seed=seed,
                                        alpha=alpha, beta=args.beta, alpha_schedule="fixed", log_every=25,
                                        eval_every=args.gen_steps, eval_batches=4, ckpt_every=args.gen_steps,
                                        expert_checkpoint=str(runs / "expert" / "latest.pth"), data_root=args.data,
                                        device="cpu")
            model = ModelConfig(img_size=48, width=args.gen_width, attention=v)
            run = runs / f"generator_{v}_alpha{alpha}_seed{seed}"
            train_generator(model, DataConfig(img_size=48, cache_frames=True), gcfg, run)
            wall = time.perf_counter() - t
            g = AttnWav2Lip(model)
            load_checkpoint_weights(g, run / "latest.pth")
            gens[(v, alpha, seed)] = {"wall_s": wall, **{k: evaluate_generator(g, m, gen_test, args.test_windows // 32, 32, rt=rt)[0]
                                                         for k, m in experts.items()}}
            print(v, alpha, seed, {k: round(gens[(v, alpha, seed)][k]["p_gen"], 3) for k in experts}, f"{wall:.0f} s",
                  file=sys.stderr)
    report(args, e_test, walls, gens, time.perf_counter() - t0)


def report(args, e_test, walls, gens, total):
    first = next(iter(gens.values()))
    ref = lambda k: first[k]
    expert_rows = "\n".join(
        f"| {k} (seed {s}) | **{e['acc']:.3f}** | {e['loss']:.3f} | {e['p_pos']:.3f} / {e['p_neg']:.3f} | {walls[k]:.0f} |"
        for (k, e), s in zip(e_test.items(), (0, 1)))
    base = "\n".join(
        f"| {name} | {ref('expert')[p]:.3f} | {ref('expert')[a]:.3f} | {ref('judge')[p]:.3f} | {ref('judge')[a]:.3f} |"
        for name, p, a in (("ground-truth frames (upper bound)", "p_real", "acc_real"),
                           ("reference frames copied (ignores the audio)", "p_ref", "acc_ref")))
    rows = "\n".join(
        f"| {v}{' (α = 0: L1 only)' if alpha == 0 else ''}, seed {s} | {m['expert']['p_gen']:.3f} | {m['expert']['p_shift']:.3f} | "
        f"{m['expert']['sync_acc']:.3f} | {m['judge']['p_gen']:.3f} | {m['judge']['p_shift']:.3f} | {m['judge']['sync_acc']:.3f} | "
        f"{m['expert']['l1']:.4f} | {m['wall_s']:.0f} |" for (v, alpha, s), m in gens.items())
    raw = {f"{v}/alpha{a}/seed{s}": {j: {k: round(x, 4) for k, x in m[j].items()} for j in ("expert", "judge")}
           for (v, a, s), m in gens.items()}
    text = f"""# Training learns lip sync on the synthetic corpus (CPU scale)

Produced by `python bench/bench_train.py learning {' '.join(sys.argv[2:])}`
({datetime.date.today().isoformat()}, {total / 60:.1f} min in all) — machine: {machine(args.threads)}.

## Settings
- corpus: `{args.data}` (the synthetic corpus preprocessed at 48 px); training on `train.txt`, the evaluations
  during training on `val.txt`, every number below on **`test.txt`** — speakers never seen in training —
  {args.test_windows} windows per number, drawn with their own seed.
- experts: `ModelConfig(img_size=48, width={args.expert_width})`, batch 64, Adam lr {args.expert_lr}, {args.expert_steps} steps.
  The **expert** (seed 0, `train.txt`) is the one the generators train against; the **judge** (seed 1, trained on
  `{args.judge_list}.txt`{' — speakers disjoint from every other split' if args.judge_list == 'judge' else ''}) never sees a generator and gives the
  independent verdict. A generator can learn to please the expert it trains against without making convincing
  mouths; the judge is not fooled that way.
- generators: `ModelConfig(img_size=48, width={args.gen_width}, attention=…)`, batch {args.gen_batch} windows, Adam lr {args.gen_lr},
  {args.gen_steps} steps, α = {args.alpha} fixed from step 0 (the paper's fine-tune setting), β = {args.beta}; seeds {args.seeds}.

## Experts (held-out test split)
| expert | accuracy (chance 0.5) | BCE loss (chance 0.693) | mean P_sync in-sync / off-sync | training wall time (s) |
|---|---|---|---|---|
{expert_rows}

## Generators (held-out test split)
Mean P_sync of generated windows against their own audio (`p_gen`) and the share called in sync (`acc`), next to
the reference points measured on the same windows, and the **shifted-audio control**: the same generator fed another
window's audio, judged against the true audio (`p_shift`). A generator whose mouths follow the audio has
`p_gen` > `p_shift`; one that also looks as convincing as real mouths has `p_gen` > the reference copy.

| windows | expert: mean P_sync | expert: share in sync | judge: mean P_sync | judge: share in sync |
|---|---|---|---|---|
{base}

| generator | expert: p_gen | expert: p_shift | expert: acc | judge: p_gen | judge: p_shift | judge: acc | L1 | wall time (s) |
|---|---|---|---|---|---|---|---|---|
{rows}

Raw numbers: `{json.dumps(raw)}`
"""
    out = Path(args.out or RESULTS / "training.md")
    if out.is_file() and NOTES in out.read_text(): text += NOTES + out.read_text().split(NOTES, 1)[1]
    write_report(out, text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    a = sub.add_parser("throughput", help="s/step and samples/s per attention variant")
    a.add_argument("--repeats", type=int, default=5)
    a.add_argument("--warmup", type=int, default=1)
    a.add_argument("--threads", type=int, default=1, help="1 is steadiest on a shared 2-core machine")
    a.add_argument("--device", default="auto")
    a.add_argument("--amp", default="auto")
    a.add_argument("--only-cpu-size", action="store_true", help="skip the paper size")
    a.add_argument("--out", default=None)
    b = sub.add_parser("learning", help="learned-sync evidence on a preprocessed 48 px corpus")
    b.add_argument("--data", required=True, help="preprocessed 48 px corpus with train/val/test.txt")
    b.add_argument("--runs", default="runs/bench_learning", help="where the runs are written")
    b.add_argument("--expert-width", type=float, default=0.125)
    b.add_argument("--expert-lr", type=float, default=1e-3)
    b.add_argument("--expert-steps", type=int, default=1200)
    b.add_argument("--gen-width", type=float, default=0.25)
    b.add_argument("--gen-lr", type=float, default=1e-3)
    b.add_argument("--gen-steps", type=int, default=200)
    b.add_argument("--gen-batch", type=int, default=8)
    b.add_argument("--alpha", type=float, default=0.03)
    b.add_argument("--beta", type=float, default=0.0)
    b.add_argument("--variants", nargs="+", default=list(VARIANTS))
    b.add_argument("--seeds", nargs="+", type=int, default=[0])
    b.add_argument("--l1-control", action="store_true", help="also train Wav2Lip with α = 0 (L1 only)")
    b.add_argument("--test-windows", type=int, default=512)
    b.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared 2-core machine")
    b.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.mode == "throughput":
        torch.set_num_threads(args.threads)
        throughput(args)
    else: learning(args)


if __name__ == "__main__":
    main()
