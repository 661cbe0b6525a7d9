"""Training throughput at the CPU size: samples/s of one optimisation step of the generator and of the expert, for
each way of making the step faster, against the plain fp32 eager step of the previous default in the same run.

One step is what the trainers do per batch, through their own `train_step`: **generator** — G forward,
L = (1 − α − β)·L1 + α·L_sync (frozen expert) + β·L_gen, backward, Adam, then the visual-quality discriminator's step;
**expert** — forward, BCE on the cosine similarity, backward, Adam. Inputs are fixed random batches (data loading is
timed apart: the frame cache rows). Settings are timed in turns, after warm-up rounds, and the median is reported;
"× previous" is samples/s relative to the first row of the same network.

    python bench/bench_train.py              # writes bench/results/training_throughput.md (its notes are kept)
"""
import argparse
import datetime
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnwav2lip.data import DataConfig, GeneratorDataset, write_toy_corpus
from attnwav2lip.models import ModelConfig
from attnwav2lip.runs import Runtime, save_checkpoint
from attnwav2lip.train import ExpertTrainConfig, ExpertTrainer, GeneratorTrainConfig, GeneratorTrainer

from _machine import cpu_name
from _results import write_keeping_notes

RESULTS = Path(__file__).parent / "results"
NOTES = "<!-- notes: kept when the tables are regenerated -->"
T, S = 5, 48


def no_guard(**losses): pass


def corpus(root:Path) -> Path:
    write_toy_corpus(root, {f"spk{i}/00001": 40 for i in range(4)}, size=S)
    (root / "train.txt").write_text("spk0/00001\nspk1/00001\nspk2/00001\n"); (root / "val.txt").write_text("spk3/00001\n")
    return root


def expert_trainer(root, batch, rt=None, width=0.125):
    rt = rt or Runtime(torch.device("cpu"))
    return ExpertTrainer(ModelConfig(img_size=S, width=width), DataConfig(img_size=S),
                         ExpertTrainConfig(batch_size=batch, steps=1, data_root=str(root)), rt, root)


def expert_checkpoint(root) -> str:
    e = expert_trainer(root, 8)
    save_checkpoint({"state_dict": e.model.state_dict(), "global_step": 0, "config": {"model": ModelConfig(img_size=S, width=0.125).to_dict()}}, root / "expert")
    return str(root / "expert" / "latest.pth")


def generator_trainer(root, batch, layout, rt=None, attention="none", beta=0.07, lr=1e-3):
    rt = rt or Runtime(torch.device("cpu"))
    cfg = GeneratorTrainConfig(batch_size=batch, steps=1, lr=lr, alpha=0.03, beta=beta, alpha_schedule="fixed",
                               data_root=str(root), expert_checkpoint=str(root / "expert" / "latest.pth"))
    return GeneratorTrainer(ModelConfig(img_size=S, width=0.25, attention=attention, kept_resolution=layout),
                            DataConfig(img_size=S), cfg, rt, root)


def gen_batch(b, cl=False):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(b, 6, T, S, S, generator=g), torch.rand(b, 3, T, S, S, generator=g)
    return (x, torch.randn(b, T, 1, 80, 16, generator=g), torch.randn(b, 1, 80, 16, generator=g), y)


def exp_batch(b):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(b, 3 * T, S // 2, S, generator=g), torch.randn(b, 1, 80, 16, generator=g), (torch.rand(b, 1, generator=g) > 0.5).float())


def channels_last(trainer):
    for m in (trainer.model, getattr(trainer, "disc", None), getattr(trainer, "expert", None)):
        if m is not None: m.to(memory_format=torch.channels_last)
    return trainer


def compiled(trainer):
    trainer.net = torch.compile(trainer.model)
    if getattr(trainer, "disc_net", None) is not None: trainer.disc_net = torch.compile(trainer.disc)
    return trainer


def _steps_in_process(args):
    "A worker of the two-process rows: its own trainer, one thread, n timed steps after one warm-up."
    kind, root, batch, n = args
    torch.set_num_threads(1)
    tr = generator_trainer(Path(root), batch, "bottom") if kind == "generator" else expert_trainer(Path(root), batch)
    b = gen_batch(batch) if kind == "generator" else exp_batch(batch)
    tr.train_step(b, no_guard)
    t = time.perf_counter()
    for _ in range(n): tr.train_step(b, no_guard)
    return time.perf_counter() - t


def two_processes(kind, root, batch, n):
    "Samples/s of two single-thread processes training side by side (what the pipeline's worker pool does)."
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(2) as pool: pool.map(_steps_in_process, [(kind, str(root), batch, n)] * 2)
    return 2 * n * batch / (time.perf_counter() - t0)


def bf16_native() -> bool:
    try: return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError: return False


def time_rows(settings:dict, repeats:int, warmup:int) -> dict:
    "{name: [seconds per step]} of settings {name: (trainer, batch tuple)}, timed in turns."
    times = {k: [] for k in settings}
    for r in range(warmup + repeats):
        for k, (tr, b) in settings.items():
            t = time.perf_counter(); tr.train_step(b, no_guard)
            if r >= warmup: times[k].append(time.perf_counter() - t)
        print(f"  round {r + 1}/{warmup + repeats}", file=sys.stderr)
    return times


def data_rows(root, batch, n=20) -> list:
    "Seconds to assemble one generator batch from the crops: every frame decoded, and from a warm frame cache."
    out = []
    for name, cache in (("decoded from jpg every time (cache_bytes = 0)", 0), ("decoded frames cached (cache_bytes = 256 MiB)", 256 * 2**20)):
        ds = GeneratorDataset(root, root / "train.txt", DataConfig(img_size=S, cache_bytes=cache))
        for i in range(len(ds) * 4): ds.set_epoch(i); ds[i % len(ds)]          # warm the mel (and frame) caches
        t = time.perf_counter()
        for k in range(n):
            ds.set_epoch(k); [ds[(k + j) % len(ds)] for j in range(batch)]
        out.append((name, (time.perf_counter() - t) / n))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the single-process rows")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows (they compile for minutes)")
    ap.add_argument("--out", default=RESULTS / "training_throughput.md")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = corpus(Path(tmp))
        expert_checkpoint(root)
        bf16 = Runtime(torch.device("cpu"), amp_dtype=torch.bfloat16)
        gens = {
            "previous default: kept_resolution 'top', fp32 eager": (generator_trainer(root, 8, "top"), gen_batch(8)),
            "kept_resolution 'bottom' (the default), fp32 eager": (generator_trainer(root, 8, "bottom"), gen_batch(8)),
            "'bottom' + channels_last": (channels_last(generator_trainer(root, 8, "bottom")),
                                         tuple(t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t for t in gen_batch(8))),
            "'bottom' + bf16 autocast": (generator_trainer(root, 8, "bottom", rt=bf16), gen_batch(8)),
            "'bottom', batch 16": (generator_trainer(root, 16, "bottom"), gen_batch(16)),
            "'bottom', AttnWav2Lip (cbam)": (generator_trainer(root, 8, "bottom", attention="cbam"), gen_batch(8)),
            "'bottom', β = 0 (no discriminator step)": (generator_trainer(root, 8, "bottom", beta=0.0), gen_batch(8)),
        }
        experts = {"fp32 eager (the default)": (expert_trainer(root, 64), exp_batch(64)),
                   "channels_last": (channels_last(expert_trainer(root, 64)), (exp_batch(64)[0].contiguous(memory_format=torch.channels_last),) + exp_batch(64)[1:]),
                   "bf16 autocast": (expert_trainer(root, 64, rt=bf16), exp_batch(64)),
                   "batch 128": (expert_trainer(root, 128), exp_batch(128))}
        compile_s = {}
        if not a.no_compile:
            for table, key, make, b in ((gens, "'bottom' + torch.compile", lambda: generator_trainer(root, 8, "bottom"), gen_batch(8)),
                                        (experts, "torch.compile", lambda: expert_trainer(root, 64), exp_batch(64))):
                tr = compiled(make()); t = time.perf_counter()
                try: tr.train_step(b, no_guard); compile_s[key] = time.perf_counter() - t; table[key] = (tr, b)
                except Exception as e: compile_s[key] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        print("generator rows", file=sys.stderr); gt = time_rows(gens, a.repeats, a.warmup)
        print("expert rows", file=sys.stderr); et = time_rows(experts, a.repeats, a.warmup)
        batch_of = lambda b: len(b[0])
        two_gen, two_exp = two_processes("generator", root, 8, 12), two_processes("expert", root, 64, 40)
        loading = data_rows(root, 8)
    lines = []
    for label, times, table, extra in (("generator (48 px, width 0.25, α 0.03, β 0.07 with its discriminator)", gt, gens, ("two processes × 1 thread, 'bottom', batch 8, 12 steps each (wall time from pool start: includes start-up)", two_gen)),
                                       ("expert (48 px, width 0.125)", et, experts, ("two processes × 1 thread, batch 64, 40 steps each (wall time from pool start: includes start-up)", two_exp))):
        first = None
        lines += [f"### {label}", "", "| setting | threads | windows/step | s/step (median) | windows/s | × previous | timed steps (s) |",
                  "|---|---|---|---|---|---|---|"]
        for k, ts in times.items():
            b = batch_of(table[k][1]); med = statistics.median(ts); rate = b / med
            first = first or rate
            note = f" (compiling took {compile_s[k]:.0f} s)" if isinstance(compile_s.get(k), float) else ""
            lines.append(f"| {k}{note} | {a.threads} | {b} | {med:.3f} | {rate:.1f} | {rate / first:.2f}× | {', '.join(f'{t:.3f}' for t in ts)} |")
        lines.append(f"| {extra[0]} | 1 + 1 | – | – | {extra[1]:.1f} | {extra[1] / first:.2f}× | – |")
        lines += [f"| {k}: {v} | | | | | | |" for k, v in compile_s.items() if isinstance(v, str) and k in table]
        lines.append("")
    lines += ["### Data: one generator batch of 8 windows (10 crops each) from the 48 px crops", "",
              "| frames | s/batch |", "|---|---|", *[f"| {n} | {s:.4f} |" for n, s in loading], ""]
    body = "\n".join(lines)
    print(body)
    text = f"""# Training throughput at the CPU size

Produced by `python bench/bench_train.py` ({datetime.date.today().isoformat()}, {(time.perf_counter() - started) / 60:.1f} min)
on {cpu_name()}, {os.cpu_count()} logical CPUs (native bf16: {'yes' if bf16_native() else 'no'}); Python {platform.python_version()},
torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} at the end. Random input batches; the median of {a.repeats}
steps after {a.warmup} warm-up rounds, settings timed in turns. "× previous" compares samples/s with the first row of
its table, the plain fp32 eager step of the previous default (the generator's `kept_resolution='top'`).

{body}"""
    write_keeping_notes(a.out, text + "\n", NOTES)
    print(f"wrote {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
