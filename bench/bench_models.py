"""Cost of the attention variants: generator inference frames/s and training-step time, paper and CPU sizes.

For each size, the four variants ('none' = Wav2Lip, 'channel', 'spatial', 'cbam' = AttnWav2Lip) are built side by
side and timed in turns (round-robin, so a change in machine load hits all variants alike): warm-up rounds first,
then the median of `--repeats` timed rounds. Costs relative to 'none' come from the same run.

- inference: eval mode, no_grad, one batch of 16 frames (4-D input, as at inference time);
- training step: train mode, zero_grad + forward on B windows of T = 5 frames + L1 loss + backward + Adam step.

    python bench/bench_models.py                    # writes bench/results/models.md
    python bench/bench_models.py --repeats 7 --threads 2 --out /tmp/models.md
"""
import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnwav2lip.models import VARIANTS, AttnWav2Lip, ModelConfig

from _machine import cpu_name

T = 5             # frames per training window (Wav2Lip)
INFER_BATCH = 16  # frames per inference batch (Wav2Lip's inference default is 128; 16 keeps CPU runs short)
SIZES = [         # (label, config without the variant, training windows per step)
    ('paper: 96 px, width 1', dict(img_size=96, width=1.0), 2),
    ('CPU: 48 px, width 0.5', dict(img_size=48, width=0.5), 8),
    ('CPU: 48 px, width 0.25', dict(img_size=48, width=0.25), 8),
]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_size(size:dict, windows:int, warmup:int, repeats:int) -> dict:
    "Per variant: parameter count and the timed runs of inference and training step."
    torch.manual_seed(0)
    S = size['img_size']
    gens = {v: AttnWav2Lip(ModelConfig(attention=v, **size)) for v in VARIANTS}
    opts = {v: torch.optim.Adam(g.parameters(), lr=1e-4) for v, g in gens.items()}
    infer_in = (torch.randn(INFER_BATCH, 1, 80, 16), torch.rand(INFER_BATCH, 6, S, S))
    train_in = (torch.randn(windows, T, 1, 80, 16), torch.rand(windows, 6, T, S, S))
    target = torch.rand(windows, 3, T, S, S)

    def infer(v):
        gens[v].eval()
        with torch.no_grad(): gens[v](*infer_in)

    def train_step(v):
        gens[v].train()
        opts[v].zero_grad(set_to_none=True)
        loss = (gens[v](*train_in) - target).abs().mean()
        loss.backward()
        opts[v].step()

    runs = {v: {'params': sum(p.numel() for p in g.parameters()), 'infer': [], 'train': []} for v, g in gens.items()}
    for kind, fn in (('infer', infer), ('train', train_step)):
        for round_ in range(warmup + repeats):
            for v in VARIANTS:
                t = timed(lambda: fn(v))
                if round_ >= warmup: runs[v][kind].append(t)
            print(f"  {kind} round {round_ + 1}/{warmup + repeats} done", file=sys.stderr)
    return runs


def table(results:list, windows_of:dict) -> str:
    lines = ["| size | variant | parameters | inference frames/s | vs none | training step (s) | vs none | training frames/s |",
             "|---|---|---|---|---|---|---|---|"]
    for label, runs in results:
        base_i, base_t = statistics.median(runs['none']['infer']), statistics.median(runs['none']['train'])
        frames = windows_of[label] * T
        for v in VARIANTS:
            i, t = statistics.median(runs[v]['infer']), statistics.median(runs[v]['train'])
            lines.append(f"| {label} (train B={windows_of[label]}×T={T}) | {v} | {runs[v]['params']:,} | "
                         f"{INFER_BATCH / i:.1f} | {i / base_i:.2f}× | {t:.3f} | {t / base_t:.2f}× | {frames / t:.1f} |")
    return "\n".join(lines)


def spread(results:list) -> str:
    lines = ["| size | variant | inference batch times (s) | training step times (s) |", "|---|---|---|---|"]
    for label, runs in results:
        for v in VARIANTS:
            fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)
            lines.append(f"| {label} | {v} | {fmt(runs[v]['infer'])} | {fmt(runs[v]['train'])} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--repeats', type=int, default=5, help='timed rounds per measurement (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed rounds before timing')
    p.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    p.add_argument('--out', default=str(Path(__file__).parent / 'results' / 'models.md'), help='markdown results file')
    args = p.parse_args(argv)
    if args.repeats < 5: p.error('--repeats must be at least 5 (median of >= 5)')
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = []
    for label, size, windows in SIZES:
        print(f"{label}: building and timing {len(VARIANTS)} variants", file=sys.stderr)
        results.append((label, bench_size(size, windows, args.warmup, args.repeats)))
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()
    body = table(results, {label: w for label, _, w in SIZES})
    print(body)

    report = f"""# Generator cost of the attention variants

Produced by `python bench/bench_models.py` ({datetime.date.today().isoformat()}, {elapsed / 60:.1f} min).

- machine: {cpu_name()}, {os.cpu_count()} logical CPUs; Python {platform.python_version()}, torch {torch.__version__};
  `torch.set_num_threads({args.threads})`; CPU float32.
- protocol: for each size the four variants are timed in turns (round-robin), {args.warmup} warm-up rounds, then the
  **median of {args.repeats}** timed rounds; "vs none" is the cost relative to plain Wav2Lip in the same run.
- inference: eval + no_grad, batch of {INFER_BATCH} frames. Training step: zero_grad + forward on B windows of T={T}
  frames + L1 + backward + Adam step. At the paper size the training batch is only **B=2 windows** (10 frames) to keep
  the run short (the paper trains with batch 80 on a GPU; the step time grows roughly linearly with B).
- the machine is shared: load average {load_before[0]:.2f} before and {load_after[0]:.2f} after the run, so absolute
  timings are noisy; compare variants only within this table.

{body}

All timed runs:

{spread(results)}
"""
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile('w', dir=out.parent, suffix='.tmp', delete=False) as f:
        f.write(report)
    os.replace(f.name, out)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == '__main__':
    main()
