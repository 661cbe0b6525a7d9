"""The paper-scale step on a GPU: 96 px faces, full width, batch 80 — the generator with the visual-quality
discriminator and the frozen expert (α = 0.03, β = 0.07), 20 optimisation steps in fp32 and in bf16 autocast; steps/s,
samples/s and peak GPU memory per precision, and one checkpoint write / resume: a trainer restored from the checkpoint
written after step 10 must reproduce the uninterrupted run's losses for steps 11–20. Writes bench/results/gpu.md.

    python bench/bench_gpu.py                         # on a CUDA machine
    python bench/bench_gpu.py --size 48 --width 0.0625 --batch 4 --steps 4 --device cpu   # a smoke run of the script itself
"""
import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

from attnwav2lip.data import DataConfig, write_toy_corpus
from attnwav2lip.models import ModelConfig
from attnwav2lip.runs import Runtime, load_checkpoint, save_checkpoint
from attnwav2lip.train import GeneratorTrainConfig, GeneratorTrainer

RESULTS = Path(__file__).parent / "results"


def no_guard(**losses): pass


def setup(root, a, dtype):
    dev = torch.device(a.device)
    rt = Runtime(dev, amp_dtype=dtype)
    write_toy_corpus(root, {"spk0/00001": 30, "spk1/00001": 30}, size=a.size)
    (root / "train.txt").write_text("spk0/00001\n"); (root / "val.txt").write_text("spk1/00001\n")
    torch.manual_seed(0)
    from attnwav2lip.models import SyncNetColor
    expert_cfg = ModelConfig(img_size=a.size, width=a.width)
    save_checkpoint({"state_dict": SyncNetColor(expert_cfg).state_dict(), "global_step": 0, "config": {"model": expert_cfg.to_dict()}},
                    root / "expert")
    return rt


def trainer(root, a, rt):
    torch.manual_seed(0)
    cfg = GeneratorTrainConfig(batch_size=a.batch, steps=a.steps, alpha=0.03, beta=0.07, alpha_schedule="fixed", lr=1e-4,
                               data_root=str(root), expert_checkpoint=str(root / "expert" / "latest.pth"), device=a.device)
    return GeneratorTrainer(ModelConfig(img_size=a.size, width=a.width, attention="cbam"), DataConfig(img_size=a.size), cfg, rt, root / "run")


def batch(a, dev):
    g = torch.Generator().manual_seed(0)
    T, S, b = 5, a.size, a.batch
    return tuple(t.to(dev) for t in (torch.rand(b, 6, T, S, S, generator=g), torch.randn(b, T, 1, 80, 16, generator=g),
                                     torch.randn(b, 1, 80, 16, generator=g), torch.rand(b, 3, T, S, S, generator=g)))


def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize(dev)


def run_precision(a, name, dtype):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rt = setup(root, a, dtype)
        dev, x = rt.device, batch(a, rt.device)
        if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
        tr = trainer(root, a, rt)
        tr.train_step(x, no_guard); sync(dev)                       # warm-up (cuDNN autotune, allocator)
        tr = trainer(root, a, rt)
        half, losses = a.steps // 2, []
        t0 = time.perf_counter()
        for step in range(1, a.steps + 1):
            losses.append(float(tr.train_step(x, no_guard)["loss"]))
            if step == half:
                sync(dev); paused = time.perf_counter()
                save_checkpoint({**tr.state_dict(), "global_step": step}, root / "ckpt")
                t0 += time.perf_counter() - paused                  # the checkpoint write is not a training step
        sync(dev); seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else float("nan")
        resumed = trainer(root, a, rt)
        resumed.load_state_dict(load_checkpoint(root / "ckpt" / "latest.pth"))
        again = [float(resumed.train_step(x, no_guard)["loss"]) for _ in range(a.steps - half)]
        same = max(abs(p - q) for p, q in zip(again, losses[half:]))
        return dict(name=name, steps_s=a.steps / seconds, samples_s=a.steps * a.batch / seconds, peak_gib=peak,
                    first=losses[0], last=losses[-1], resume_diff=same)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=96); ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=80); ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cuda"); ap.add_argument("--out", default=RESULTS / "gpu.md")
    a = ap.parse_args(argv)
    if a.device.startswith("cuda") and not torch.cuda.is_available(): sys.exit("bench_gpu: no CUDA device here")
    precisions = [("fp32", None)] + ([("bf16 autocast", torch.bfloat16)] if a.device.startswith("cuda") else [])
    rows = [run_precision(a, n, d) for n, d in precisions]
    where = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    text = "\n".join([
        "# The paper-scale step on a GPU", "",
        f"Measured {datetime.date.today()} with `python bench/bench_gpu.py` on {where}, torch {torch.__version__}: "
        f"{a.size} px, width {a.width}, batch {a.batch}, {a.steps} steps of generator + discriminator + frozen expert.", "",
        "| precision | steps/s | samples/s | peak GPU memory GiB | loss step 1 → last | resume: max loss difference, steps after the checkpoint |",
        "|---|---|---|---|---|---|",
        *[f"| {r['name']} | {r['steps_s']:.2f} | {r['samples_s']:.0f} | {r['peak_gib']:.2f} | {r['first']:.4f} → {r['last']:.4f} | {r['resume_diff']:.2e} |" for r in rows], ""])
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
