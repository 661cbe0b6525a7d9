"""Decoded-frame cache: memory stays flat on a corpus 10x the embedded one, and what the cache buys per sample.

Builds, in a temporary folder, a corpus of R copies (default 10) of the preprocessed embedded corpus (48 px crops,
`runs/preprocess/crops`, or --crops): copy r of clip `<speaker>/<clip>` is `<speaker>_r<r>/<clip>`, its jpgs and
audio.wav hardlinked to the originals (copied where the filesystem refuses links), so it costs no disk and the
page cache holds one copy of the jpg bytes. The embedded corpus itself is the 1x corpus.

Each run is a fresh Python process (its peak RSS, VmHWM, is its own) that draws samples from a `GeneratorDataset`
(48 px, 2T = 10 frames per sample) as a shuffled DataLoader would — epoch after epoch, `set_epoch(e)` then the clips
in a seeded random order — in one process, with the frame cache limited to `cache_bytes`. It samples RSS and the
cache's bytes as it goes. To measure the frame cache and not the audio front-end (the numpy mel costs ~70 ms a clip
here), the mels of the embedded clips are computed once, and each run fills its mel cache with them before the RSS
baseline is read, copies sharing their original's array (~25 MB in all). Runs: the 1x and 10x corpora without a
cache and with the default limit, the 10x corpus with a smaller limit, and, for contrast, the 10x corpus with no
limit (what `cache_frames=True` did). The jpgs are read once first, so that every run finds them in the page cache.

Writes bench/results/data_cache.md.

    python bench/bench_data_cache.py [--crops runs/preprocess/crops] [--copies 10] [--samples 20000]
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))          # the checkout's package, also when run as `python bench/bench_data_cache.py`
MiB = 2**20


def clip_entries(root):
    "Every `<speaker>/<clip>` folder under `root` that holds an audio.wav, sorted."
    return sorted(f"{d.parent.name}/{d.name}" for d in Path(root).glob("*/*") if (d / "audio.wav").is_file())


def replicate(crops, out, copies):
    "Write `copies` hardlinked copies of the corpus `crops` under `out` (new speaker names); returns the entries."
    link = True
    for entry in clip_entries(crops):
        spk, clip = entry.split("/")
        for r in range(copies):
            d = Path(out) / f"{spk}_r{r}" / clip
            d.mkdir(parents=True, exist_ok=True)
            for f in (Path(crops) / entry).iterdir():
                if link:
                    try: os.link(f, d / f.name); continue
                    except OSError: link = False
                shutil.copy2(f, d / f.name)
    return link


def status_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"): return int(line.split()[1])


def source_entry(entry, replicated):
    "The embedded clip that `entry` copies (`<speaker>_r<r>/<clip>` -> `<speaker>/<clip>`)."
    spk, clip = entry.split("/")
    return f"{spk.rsplit('_r', 1)[0]}/{clip}" if replicated else entry


def one_run(root, mels, replicated, cache_bytes, samples, seed=0):
    "Draw `samples` generator samples from the corpus at `root`; returns what was measured (dict)."
    import numpy as np
    import torch
    from attnwav2lip.data import DataConfig, GeneratorDataset
    torch.set_num_threads(1)
    entries = clip_entries(root)
    ds = GeneratorDataset(root, entries, DataConfig(img_size=48, cache_bytes=cache_bytes, mel_cache=len(entries)))
    with np.load(mels) as z: originals = {k.replace("|", "/"): z[k] for k in z.files}
    for i, entry in enumerate(ds.clips):                # every copy of a clip shares its original's mel array
        ds._mels[i] = originals[source_entry(entry, replicated)]
    frames = sum(len(ids) for ids in ds.frame_ids)
    rng, n, points, full_at = np.random.default_rng(seed), 0, [], None
    marks = {round(samples * q) for q in (0.1, 0.25, 0.5, 0.75, 1.0)}
    rss0 = status_kib("VmRSS")
    t0 = time.perf_counter()
    epoch = 0
    while n < samples:
        ds.set_epoch(epoch)
        for k in rng.permutation(len(ds)):
            ds[int(k)]
            n += 1
            if full_at is None and ds.frame_cache.misses > len(ds.frame_cache) and cache_bytes: full_at = n  # evicted
            if n in marks:
                points.append(dict(samples=n, rss=status_kib("VmRSS") / 1024, peak=status_kib("VmHWM") / 1024,
                                   cache=ds.frame_cache.nbytes / MiB, s=time.perf_counter() - t0))
            if n == samples: break
        epoch += 1
    wall = time.perf_counter() - t0
    c = ds.frame_cache
    half = next(p for p in points if p["samples"] == round(samples * 0.5))
    return dict(clips=len(ds), frames=frames, cache_bytes=cache_bytes, samples=samples, wall=wall,
                rate=samples / wall, rate_second_half=(samples - half["samples"]) / (wall - half["s"]),
                cached_frames=len(c), cache_mib=c.nbytes / MiB, hit_rate=c.hits / max(1, c.hits + c.misses),
                full_at=full_at, rss_start=rss0 / 1024, points=points)


def fmt_limit(b):
    return "none (0)" if b == 0 else "unbounded" if b >= 2**40 else f"{b / MiB:.0f} MiB"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--crops", default=str(ROOT / "runs" / "preprocess" / "crops"), help="the 48 px embedded corpus")
    ap.add_argument("--copies", type=int, default=10)
    ap.add_argument("--samples", type=int, default=20000, help="samples per cached run")
    ap.add_argument("--uncached-samples", type=int, default=5000, help="samples per run without a cache")
    ap.add_argument("--small-limit", type=int, default=64 * MiB)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_cache.md"))
    ap.add_argument("--one", help=argparse.SUPPRESS)        # internal: one run, JSON on stdout
    a = ap.parse_args(argv)
    warnings.simplefilter("ignore")                     # the datasets warn about the clips they exclude
    if a.one:
        print(json.dumps(one_run(*json.loads(a.one))))
        return
    import numpy as np
    from attnwav2lip import __version__
    from attnwav2lip.data import ClipDataset, DataConfig
    from _machine import cpu_name
    crops, default = Path(a.crops), DataConfig.cache_bytes
    if not clip_entries(crops): sys.exit(f"{crops}: no preprocessed clips (run `dvc repro preprocess` first)")
    rows, load0 = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_data_cache_") as tmp:
        big = Path(tmp) / f"x{a.copies}"
        t = time.perf_counter()
        linked = replicate(crops, big, a.copies)
        build_s = time.perf_counter() - t
        for f in crops.glob("*/*/*"): f.read_bytes()    # warm the page cache (the copies share these inodes)
        mels = Path(tmp) / "mels.npz"                   # each embedded clip's mel, computed once for all runs
        ds = ClipDataset(crops, clip_entries(crops), DataConfig(img_size=48, mel_cache=0))
        np.savez(mels, **{entry.replace("/", "|"): ds.mel(i) for i, entry in enumerate(ds.clips)})
        runs = [("1x", crops, 0, a.uncached_samples), ("1x", crops, default, a.samples),
                (f"{a.copies}x", big, 0, a.uncached_samples), (f"{a.copies}x", big, default, a.samples),
                (f"{a.copies}x", big, a.small_limit, a.samples), (f"{a.copies}x", big, 2**40, a.samples)]
        for name, root, limit, n in runs:
            job = json.dumps([str(root), str(mels), root == big, limit, n])
            res = subprocess.run([sys.executable, __file__, "--one", job],
                                 capture_output=True, text=True, check=True)
            r = dict(json.loads(res.stdout.strip().splitlines()[-1]), corpus=name)
            rows.append(r)
            print(f"{name} limit={fmt_limit(limit)}: {r['rate']:.0f} samples/s, cache {r['cache_mib']:.1f} MiB, "
                  f"peak RSS {r['points'][-1]['peak']:.0f} MiB", flush=True)
    q = ["10%", "25%", "50%", "75%", "100%"]
    head = ("| corpus | clips | frames | cache limit | samples | cache full after | frames cached at end | "
            "cache MiB at end | hit rate | RSS before sampling, MiB | peak RSS at " + " / ".join(q) + " of samples, MiB | "
            "samples/s (all) | samples/s (2nd half) |")
    table = [head, "|" + "---|" * 13]
    for r in rows:
        peaks = " / ".join(f"{p['peak']:.0f}" for p in r["points"])
        table.append(f"| {r['corpus']} | {r['clips']} | {r['frames']} | {fmt_limit(r['cache_bytes'])} | {r['samples']} | "
                     f"{r['full_at'] or '—'} | {r['cached_frames']} | {r['cache_mib']:.1f} | {r['hit_rate']:.2f} | "
                     f"{r['rss_start']:.0f} | {peaks} | {r['rate']:.0f} | {r['rate_second_half']:.0f} |")
    cmd = " ".join(["python bench/bench_data_cache.py"] + (argv if argv is not None else sys.argv[1:]))
    text = "\n".join([
        "# The decoded-frame cache on a corpus 10× the embedded one", "",
        f"Measured {datetime.date.today()} on {cpu_name()}, {os.cpu_count()} cores (shared), one process per run, "
        f"attnwav2lip {__version__}; `{cmd}`. Load average {load0:.1f} at the start, {os.getloadavg()[0]:.1f} at "
        "the end: other jobs shared the cores, so the rates are rough; the memory columns do not depend on it.", "",
        f"The {a.copies}x corpus is {a.copies} copies of the embedded corpus preprocessed at 48 px (`{a.crops}`) "
        f"under new speaker names, {'hardlinked' if linked else 'copied'} into a temporary folder ({build_s:.0f} s). "
        "Each row is a fresh process drawing `GeneratorDataset` samples (48 px, 10 frames each) epoch after epoch "
        "in a seeded shuffled order; the mel cache is filled with every clip's mel first (copies share their "
        "original's array) so that the rows measure frame decoding and the frame cache, not the audio front-end. "
        "The jpgs are read once before the runs, so every run finds them in the page cache. "
        "`cache MiB` is what the cache charges (array bytes + 320 B a frame); `cache full after`: the sample at which the cache first evicted a frame; `peak RSS` is the "
        "process's high-water mark (VmHWM) when that share of the samples was drawn. `unbounded` is what the old "
        "`cache_frames=True` did: keep every frame. Each DataLoader worker would hold its own cache, so a loader "
        "with W workers needs W times the cache limit.", "",
        *table, ""])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
