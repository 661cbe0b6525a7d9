"""Inference speed of `attnwav2lip sync` for the 96-px model (random weights: speed does not depend on them).

1. Generator alone, same inputs, same run: plain fp32 eager (`model.eval()` under `torch.no_grad`, NCHW) against the
   prepared `InferenceGenerator` (BatchNorm folded, channels-last, inference mode, bf16 where supported and within
   tolerance). Runs are interleaved; best of `--reps`.
2. End to end (`lipsync` on a 640×360 25 fps talking-head clip with synthesised speech): frames/s and seconds per
   stage (detection, decoding, generator, blending, encoding, setup = checkpoint loading + preparation), first with
   an empty detection cache, then again with other audio (detections read from the cache); fastest of `--e2e-reps`.

Prints the tables and writes them to bench/results/inference.md.
    python bench/bench_inference.py [--threads 2] [--attention none cbam] [--gen-batches 16 128] [--reps 5]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
import torch
from skimage import data as skdata

from attnwav2lip import __version__
from attnwav2lip.faces import default_device
from attnwav2lip.inference import InferenceGenerator, Mp4Writer, bf16_supported, lipsync
from attnwav2lip.models import AttnWav2Lip, ModelConfig

from _machine import cpu_name
from attnwav2lip.synthetic import speak

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ("The quick brown fox jumps over the lazy dog, and then it runs away into the quiet forest.",
             "Please call Stella and ask her to bring these things with her from the store.")


def make_inputs(d: Path, width: int = 640, height: int = 360) -> tuple:
    "Two speech wavs and a talking-head clip as long as the first (the astronaut's face drifting in a 360p frame)."
    wavs = []
    for i, text in enumerate(SENTENCES):
        u = speak(text)
        sf.write(d / f"speech{i}.wav", u.wav, u.sample_rate)
        wavs.append((d / f"speech{i}.wav", u.duration))
    astronaut = np.ascontiguousarray(skdata.astronaut()[..., ::-1])[:300, 90:390]  # head and shoulders, 300×300
    face = cv2.resize(astronaut, (height - 60, height - 60))
    n = round(wavs[0][1] * 25)
    with Mp4Writer(d / "clip.mp4", (width, height), 25, wavs[0][0], crf=18) as w:
        for i in range(n):
            frame = np.full((height, width, 3), (90, 110, 130), np.uint8)
            x = int(width / 2 - face.shape[1] / 2 + 20 * np.sin(2 * np.pi * i / 50))
            frame[30:30 + face.shape[0], x:x + face.shape[1]] = face
            w.write(frame)
    return d / "clip.mp4", wavs


def time_generators(model, device, batch: int, reps: int) -> dict:
    "Best seconds per batch: plain fp32 eager vs the prepared generator, interleaved."
    rng = np.random.default_rng(0)
    mels = rng.uniform(-4, 0, (batch, 80, 16)).astype(np.float32)
    crops = rng.integers(0, 256, (batch, 96, 96, 3), dtype=np.uint8)
    fast = InferenceGenerator(model, device)
    fast(mels, crops)  # 'auto' decides the precision here
    mel, face = fast.inputs(mels, crops)
    plain_model, plain_face = model.to(device).eval(), face.contiguous()

    def plain():
        with torch.no_grad(): plain_model(mel, plain_face).cpu()

    def prepared(): fast.forward(mel, face, fast.precision == "bf16").cpu()

    plain(); prepared()  # warm-up
    t_plain, t_fast = [], []
    for _ in range(reps):
        t0 = time.perf_counter(); plain(); t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); prepared(); t_fast.append(time.perf_counter() - t0)
    return dict(plain=min(t_plain), fast=min(t_fast), precision=fast.precision,
                bf16_error=fast.bf16_error)


def end_to_end(checkpoint: Path, clip: Path, wavs: list, d: Path, batch, reps: int) -> list:
    "Two runs, empty detection cache then other audio with the cache filled; the fastest of `reps` of each."
    best = [None, None]
    for _ in range(reps):
        cache = tempfile.mkdtemp(dir=d, prefix="cache")
        for i, (wav, _) in enumerate(wavs):
            r = lipsync(clip, wav, checkpoint, d / f"out{i}.mp4", batch_size=batch, cache_dir=cache, progress=False)
            if best[i] is None or r["seconds"]["total"] < best[i]["seconds"]["total"]: best[i] = r
    return best


STAGES = ("detection", "decoding", "generator", "blending", "encoding")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch/OpenCV CPU threads")
    p.add_argument("--attention", nargs="+", default=["none", "cbam"], help="generator variants to time")
    p.add_argument("--batch-size", type=int, default=None, help="frames per generator call end to end (default: sync's)")
    p.add_argument("--gen-batches", type=int, nargs="+", default=[16, 128], help="batch sizes of the generator comparison")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions of the generator comparison (best kept)")
    p.add_argument("--e2e-reps", type=int, default=2, help="repetitions of the end-to-end runs (fastest kept)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "inference.md"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cv2.setNumThreads(a.threads)
    device = default_device()
    load_before = os.getloadavg()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"{cpu_name()}, {a.threads} threads"
    lines = [f"# Inference speed (`attnwav2lip sync`, 96-px generator)", "",
             f"Machine: {where}; torch {torch.__version__}; attnwav2lip {__version__}; native bf16: "
             f"{bf16_supported(device)}; {time.strftime('%Y-%m-%d %H:%M')}. Random weights (speed does not depend on "
             f"them). Load average at start: {load_before[0]:.1f} (the machine is shared: compare numbers within one "
             f"run only).", ""]

    gen_rows, e2e_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        clip, wavs = make_inputs(d)
        for attention in a.attention:
            torch.manual_seed(0)
            model = AttnWav2Lip(ModelConfig(attention=attention)).eval()
            for batch in a.gen_batches:
                g = time_generators(model, device, batch, a.reps)
                gen_rows.append((attention, batch, g))
                print(f"[{attention}] generator, batch {batch}: plain fp32 eager {batch / g['plain']:.1f} frames/s, "
                      f"prepared ({g['precision']}) {batch / g['fast']:.1f} frames/s, ×{g['plain'] / g['fast']:.2f}",
                      flush=True)
            ckpt = d / f"{attention}.pth"
            torch.save({"state_dict": model.state_dict(), "config": {"model": model.cfg.to_dict()}}, ckpt)
            for run, r in zip(("empty cache", "cached detections"), end_to_end(ckpt, clip, wavs, d, a.batch_size, a.e2e_reps)):
                s = r["seconds"]
                s["setup"] = s["total"] - sum(s.get(k, 0.0) for k in STAGES)
                e2e_rows.append((attention, run, r))
                print(f"[{attention}] end to end, {run}: {r['frames']} frames {r['size'][0]}×{r['size'][1]} in "
                      f"{s['total']:.2f} s = {r['frames'] / s['total']:.1f} frames/s; "
                      + ", ".join(f"{k} {s.get(k, 0.0):.2f} s" for k in (*STAGES, "setup")), flush=True)

    lines += ["## Generator alone", "",
              f"Mel 1×80×16 + face 6×96×96 per frame; best of {a.reps} interleaved runs (plain, prepared, plain, …): "
              "on a shared machine the best run is the one least disturbed by other processes.", "",
              "| variant | batch | plain fp32 eager (frames/s) | prepared (frames/s) | precision chosen | max \\|bf16 − fp32\\| | speed-up |",
              "|---|---|---|---|---|---|---|"]
    for attention, batch, g in gen_rows:
        err = "–" if g["bf16_error"] is None else f"{g['bf16_error']:.4f}"
        lines.append(f"| {attention} | {batch} | {batch / g['plain']:.1f} | {batch / g['fast']:.1f} | "
                     f"{g['precision']} | {err} | ×{g['plain'] / g['fast']:.2f} |")
    lines += ["", "## End to end", "",
              "`lipsync` on a 640×360, 25 fps h264 clip with espeak-ng speech (the audio decides the length), "
              "BlazeFace detection, feathered blend, x264 `veryfast` crf 18 + aac, `sync`'s defaults (generator batch 16 on a "
              "CPU, 128 on a GPU; precision 'auto'). Seconds per stage; setup = "
              "loading the checkpoint, preparing the generator and choosing its precision. The second run uses other "
              f"audio on the same video, so detections come from the cache. Fastest of {a.e2e_reps} repetitions of each run.", "",
              "| variant | run | frames | " + " | ".join(STAGES) + " | setup | total (s) | frames/s | frames/s without setup |",
              "|---|---|---|" + "---|" * (len(STAGES) + 4)]
    for attention, run, r in e2e_rows:
        s = r["seconds"]
        lines.append(f"| {attention} | {run} | {r['frames']} | " + " | ".join(f"{s.get(k, 0.0):.2f}" for k in STAGES)
                     + f" | {s['setup']:.2f} | {s['total']:.2f} | {r['frames'] / s['total']:.1f} | "
                     f"{r['frames'] / (s['total'] - s['setup']):.1f} |")
    load_after = os.getloadavg()
    lines += ["", f"Load average at the end: {load_after[0]:.1f}.", ""]
    text = "\n".join(lines)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print("\n" + text)


if __name__ == "__main__":
    main()
