"""Peak memory of `attnwav2lip sync` against video length: 30 s and 5 min of 1080p, each run in its own process.

What is run: the whole command-line path (`attnwav2lip sync`: audio decoding and mel, video decoding, BlazeFace
detection into an empty detection cache, the generator, blending, x264 + aac encoding through ffmpeg's pipe), once per
length, in a fresh Python process, with this checkout's package first on the path.

What is made (by the project itself, offline, every run):
- the face: one talking head from the synthetic corpus renderer (`synthetic.synthesize_clip`, 540-px frames scaled to
  810 px) moving sideways over a 1920×1080 background, 25 fps, rendered and x264-encoded once as a 10 s loop; the 30 s
  and 5 min videos repeat that loop with ffmpeg's stream copy (no re-encoding), so making them costs seconds;
- the speech: espeak-ng sentences (`synthetic.speak`) at 48 kHz, 10 s repeated, written as a 48 kHz *stereo* 16-bit wav
  (the usual camera/DAW format, so the audio path resamples and mixes down as real input makes it do);
- the generator: a randomly initialised 48-px, width-0.25 `AttnWav2Lip` (CBAM), saved with `train.save_checkpoint`.
  The benchmark is about memory; its faces are noise.

What is measured per run, from /proc (Linux): the sync process's own peak resident set (VmHWM, the high-water mark
of its address space, read by the process as it ends), the largest VmHWM among the processes it starts (the ffmpeg
encoder, an ffmpeg decoder), and the peak of the whole process tree's summed resident memory (VmRSS); the last two
sampled every 0.1 s. `getrusage`'s ru_maxrss is not used: Linux carries it across fork + exec, so every child would
report at least the size of the process that started it (the benchmark itself here, ~700 MB).
A second, cheap table measures the audio front end alone (what the driving-mel step adds to the peak) the old way —
`load_wav` + `melspectrogram` of the whole file + every window stacked — and the streamed way `lipsync` uses now.

Cost: x264 at 1080p is the most expensive stage, so the benchmark encodes with `--preset ultrafast` (the default is
`veryfast`; the preset changes encoder speed, not what Python holds — x264's own memory is in the child column), and
the sync runs use one torch thread (OMP_NUM_THREADS=1): on the shared 2-core machine two OpenMP threads competing with
other jobs ran the small generator ~15× slower. Neither changes what the pipeline keeps in memory. On 2 shared CPU
cores the 5-minute run takes several minutes.

    python bench/bench_inference_memory.py [--lengths 30 300] [--preset ultrafast] [--keep DIR]
Prints the tables and writes them to bench/results/inference_memory.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf
import torch
from imageio_ffmpeg import get_ffmpeg_exe

from _machine import cpu_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, also in the child processes (PYTHONPATH below)

from attnwav2lip import __version__  # noqa: E402
from attnwav2lip.models import AttnWav2Lip, ModelConfig  # noqa: E402
from attnwav2lip.synthetic import SynthConfig, random_sentence, random_speaker, speak, synthesize_clip  # noqa: E402
from attnwav2lip.train import save_checkpoint  # noqa: E402

FPS, SIZE, UNIT_SECONDS, AUDIO_RATE = 25, (1920, 1080), 10, 48000

# Peak resident memory of the running process: VmHWM, the high-water mark of its own address space. (getrusage's
# ru_maxrss is not used: Linux carries it across fork + exec, so a child reports at least its parent's size.)
HWM = """
def vm_hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"): return int(line.split()[1])
"""

# Runs `attnwav2lip sync` (the package's CLI entry point) and reports its peak memory and CPU time as it ends.
SYNC_RUNNER = HWM + """
import json, resource, sys, time
t = time.perf_counter()
from attnwav2lip.cli import main
rc = main(["sync", *sys.argv[1:]])
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print("MEMORY " + json.dumps(dict(rc=rc, self_kib=vm_hwm_kib(), seconds=time.perf_counter() - t,
                                  cpu=me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime)))
"""

# The audio front end alone: the peak added by making the driving windows, old way (whole file) or streamed.
FRONT_RUNNER = HWM + """
import json, sys
import numpy as np
from attnwav2lip.audio import inference_mel_chunks, load_wav, melspectrogram
from attnwav2lip.inference import driving_mels, streamed_melspectrogram
path, how = sys.argv[1], sys.argv[2]
warm = np.zeros(16000, np.float32)        # first use of each way (filterbank, FFT plans) before the baseline
melspectrogram(warm); streamed_melspectrogram([warm])
before = vm_hwm_kib()
if how == "whole":   # what `lipsync` did before: the waveform, its mel, every frame's window stacked
    wav = load_wav(path, allow_silence=True)
    chunks = inference_mel_chunks(melspectrogram(wav), 25)
    n = round(len(wav) / 16000 * 25)
    windows = chunks[np.minimum(np.arange(n), len(chunks) - 1)]
else:
    windows, _ = driving_mels(path, 25)
print("MEMORY " + json.dumps(dict(before_kib=before, after_kib=vm_hwm_kib(), frames=len(windows))))
"""


def child_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def make_unit(d: Path, seed: int = 0) -> tuple:
    "The 10 s 1080p loop (video only) and 10 s of 48 kHz speech, from the synthetic corpus tools."
    rng = np.random.default_rng(seed)
    speaker = random_speaker("bench", rng)
    clip = synthesize_clip(speaker, rng, SynthConfig(size=540, supersample=1, min_seconds=3, max_seconds=4))
    heads = [cv2.resize(f, (810, 810), interpolation=cv2.INTER_LINEAR) for f in clip.frames]
    w, h = SIZE
    y, x = np.mgrid[0:h, 0:w]
    background = np.stack([70 + 60 * x / w, 80 + 50 * y / h, 100 + 40 * (x + y) / (w + h)], -1).astype(np.uint8)
    n = UNIT_SECONDS * FPS
    unit = d / "unit.mp4"
    cmd = [get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
           "-s", f"{w}x{h}", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20",
           "-g", str(n), "-pix_fmt", "yuv420p", str(unit)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for i in range(n):
        frame = background.copy()
        left = int(w / 2 - 405 + 300 * np.sin(2 * np.pi * i / n))  # one slow sway per loop: seamless when repeated
        frame[h - 810 - 60:h - 60, left:left + 810] = heads[i % len(heads)]
        proc.stdin.write(frame.data)
    proc.stdin.close()
    if proc.wait(): raise RuntimeError("ffmpeg could not encode the benchmark's loop")
    speech, k = [], 0
    while sum(map(len, speech)) < UNIT_SECONDS * AUDIO_RATE:
        speech += [speak(random_sentence(rng, 1), speaker.voice, speaker.rate, speaker.pitch, speaker.pitch_range,
                         AUDIO_RATE).wav, np.zeros(AUDIO_RATE // 4, np.float32)]
        k += 1
    return unit, np.concatenate(speech)[:UNIT_SECONDS * AUDIO_RATE]


def make_inputs(d: Path, unit: Path, speech: np.ndarray, seconds: int) -> tuple:
    "A `seconds`-long face video (the loop repeated by stream copy) and a 48 kHz stereo wav as long."
    loops = seconds // UNIT_SECONDS
    video = d / f"face_{seconds}s.mp4"
    subprocess.run([get_ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error", "-stream_loop", str(loops - 1),
                    "-i", str(unit), "-c", "copy", str(video)], check=True)
    audio = d / f"speech_{seconds}s.wav"
    with sf.SoundFile(audio, "w", AUDIO_RATE, 2, "PCM_16") as f:
        for _ in range(loops): f.write(np.stack([speech, 0.8 * speech], 1))
    cap = cv2.VideoCapture(str(video))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    if frames != seconds * FPS: raise RuntimeError(f"{video}: {frames} frames, expected {seconds * FPS}")
    return video, audio


def proc_status(pid: int) -> dict:
    "VmRSS / VmHWM (kB) and the command name of a live process; {} if it has ended."
    try:
        fields = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l)
        return dict(rss=int(fields.get("VmRSS", "0 kB").split()[0]), hwm=int(fields.get("VmHWM", "0 kB").split()[0]),
                    name=fields["Name"].strip())
    except (OSError, ValueError, KeyError): return {}


def descendants(pid: int) -> list:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try: kids = [int(c) for t in Path(f"/proc/{p}/task").iterdir() for c in (t / "children").read_text().split()]
        except (OSError, ValueError): kids = []
        out += kids; todo += kids
    return out


def run_measured(cmd: list, env: dict) -> tuple:
    """(stdout, the child's MEMORY record, sampled peaks) of one child process; sampled every 0.1 s from /proc:
    the largest VmHWM among its descendants (ffmpeg) and the peak of the whole tree's summed VmRSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = dict(tree=0, child=0, child_name="")
    def poll():
        while proc.poll() is None:
            kids = {p: proc_status(p) for p in descendants(proc.pid)}
            seen["tree"] = max(seen["tree"], proc_status(proc.pid).get("rss", 0) + sum(k.get("rss", 0) for k in kids.values()))
            for k in kids.values():
                if k.get("hwm", 0) > seen["child"]: seen["child"], seen["child_name"] = k["hwm"], k["name"]
            time.sleep(0.1)
    sampler = threading.Thread(target=poll, daemon=True); sampler.start()
    stdout, stderr = proc.communicate()
    sampler.join()
    seen["wall"] = time.perf_counter() - t0
    if proc.returncode: raise RuntimeError(f"{' '.join(map(str, cmd[:3]))} … failed ({proc.returncode}):\n{stderr[-2000:]}")
    record = next(json.loads(l[7:]) for l in stdout.splitlines() if l.startswith("MEMORY "))
    return stdout, record, seen


def mib(kib) -> str: return f"{kib / 1024:.0f}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[30, 300], help="video lengths in seconds (multiples of 10)")
    p.add_argument("--preset", default="ultrafast", help="x264 preset of the sync runs (see the docstring)")
    p.add_argument("--threads", type=int, default=1, help="torch (OpenMP) threads of the sync runs (see the docstring)")
    p.add_argument("--keep", help="keep the generated inputs and outputs in this folder")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "inference_memory.md"))
    a = p.parse_args(argv)
    if any(s % UNIT_SECONDS for s in a.lengths): p.error(f"--lengths must be multiples of {UNIT_SECONDS} s")
    load_before = os.getloadavg()
    d = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_memory_"))
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    unit, speech = make_unit(d)
    torch.manual_seed(0)
    cfg = ModelConfig(img_size=48, width=0.25, attention="cbam")
    (d / "generator").mkdir(exist_ok=True)
    ckpt = save_checkpoint({"state_dict": AttnWav2Lip(cfg).state_dict(), "global_step": 0,
                            "config": {"model": cfg.to_dict()}}, d / "generator")
    inputs = {s: make_inputs(d, unit, speech, s) for s in a.lengths}
    print(f"inputs made in {time.perf_counter() - t0:.0f} s", flush=True)

    front = []
    for s in a.lengths:
        for how in ("whole", "streamed"):
            _, r, _ = run_measured([sys.executable, "-c", FRONT_RUNNER, str(inputs[s][1]), how], child_env(a.threads))
            front.append((s, how, r))
            print(f"audio front end, {s} s, {how}: +{mib(r['after_kib'] - r['before_kib'])} MiB "
                  f"(peak {mib(r['after_kib'])} MiB)", flush=True)

    rows = []
    for s in a.lengths:
        video, audio = inputs[s]
        out = d / f"synced_{s}s.mp4"
        cmd = [sys.executable, "-c", SYNC_RUNNER, "--face", str(video), "--audio", str(audio), "--checkpoint", str(ckpt),
               "--outfile", str(out), "--cache-dir", str(d / f"cache_{s}s"), "--preset", a.preset, "--quiet"]
        stdout, r, seen = run_measured(cmd, child_env(a.threads))
        wall, tree = seen["wall"], seen["tree"]
        cap = cv2.VideoCapture(str(out))
        frames, fps = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        line = next(l for l in stdout.splitlines() if "frames (" in l)
        faces = int(line.split("frames (")[1].split()[0])
        rows.append(dict(seconds=s, video_mb=video.stat().st_size / 1e6, audio_mb=audio.stat().st_size / 1e6,
                         frames=frames, fps=fps, faces=faces, wall=wall, cpu=r["cpu"], self_kib=r["self_kib"],
                         children_kib=seen["child"], child=seen["child_name"], tree_kib=tree,
                         out_mb=out.stat().st_size / 1e6))
        print(f"sync {s} s: {frames} frames ({faces} with a face) in {wall:.0f} s; peak RSS sync process "
              f"{mib(r['self_kib'])} MiB, largest child ({seen['child_name']}) {mib(seen['child'])} MiB, "
              f"tree (sampled) {mib(tree)} MiB",
              flush=True)
        if frames != round(s * FPS): raise RuntimeError(f"{out}: {frames} frames, expected {round(s * FPS)}")

    lines = ["# Peak memory of `attnwav2lip sync` against video length", "",
             f"Machine: {cpu_name()}, {os.cpu_count()} cores; torch {torch.__version__}; attnwav2lip {__version__}; "
             f"{time.strftime('%Y-%m-%d %H:%M')}. Load average at start {load_before[0]:.1f}, at the end "
             f"{os.getloadavg()[0]:.1f} (shared machine: times are indicative, memory is not affected).", "",
             "Inputs made by the project (`bench/bench_inference_memory.py`): a synthetic talking head "
             f"(`synthetic.synthesize_clip`) swaying over a {SIZE[0]}×{SIZE[1]} background at {FPS} fps, a 10 s x264 "
             f"loop repeated by stream copy; espeak-ng speech as a {AUDIO_RATE // 1000} kHz stereo 16-bit wav as long "
             "as the video. Generator: random 48-px, width-0.25 CBAM `AttnWav2Lip` (memory, not faces, is measured). "
             f"Each length is one `attnwav2lip sync` run in a fresh process with an empty detection cache: BlazeFace, "
             f"generator batch 16 ({a.threads} torch thread{'s' * (a.threads > 1)}), x264 `--preset {a.preset}` crf 18 + "
             "aac. Peak RSS from /proc: VmHWM of the sync process (exact), the largest VmHWM among its children and the "
             "summed VmRSS of the process tree (both sampled every 0.1 s).", "",
             "| input | video file (MB) | audio file (MB) | output frames | with a face | wall (s) | CPU (s) | "
             "peak RSS, sync process (MiB) | peak RSS, largest child (MiB) | peak summed RSS of the tree (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seconds']} s 1080p | {r['video_mb']:.1f} | {r['audio_mb']:.1f} | {r['frames']} | "
                     f"{r['faces']} | {r['wall']:.0f} | {r['cpu']:.0f} | {mib(r['self_kib'])} | {mib(r['children_kib'])} ({r['child']}) | "
                     f"{mib(r['tree_kib'])} |")
    if len(rows) >= 2:
        lo, hi = rows[0], rows[-1]
        ratio = lambda k: f"{hi[k] / lo[k]:.2f}"
        lines.append(f"| ratio {hi['seconds']} s / {lo['seconds']} s | | | {hi['frames'] / lo['frames']:.1f} | | "
                     f"{hi['wall'] / lo['wall']:.1f} | {hi['cpu'] / lo['cpu']:.1f} | {ratio('self_kib')} | "
                     f"{ratio('children_kib')} | {ratio('tree_kib')} |")
    lines += ["", "## The audio front end alone", "",
              "Peak RSS added by turning the whole driving audio into its per-frame windows, in a fresh process after "
              "the imports and a 1 s warm-up of both ways (`before` = the peak up to then). *whole*: what `lipsync` did before — "
              "`load_wav` of the whole file, `melspectrogram`, every frame's (80, 16) window stacked; *streamed*: "
              "`driving_mels` now — decoded and turned into mel block by block, windows cut on demand.", "",
              "| audio | way | frames | peak before (MiB) | peak after (MiB) | added (MiB) |", "|---|---|---|---|---|---|"]
    for s, how, r in front:
        lines.append(f"| {s} s, {AUDIO_RATE // 1000} kHz stereo | {how} | {r['frames']} | {mib(r['before_kib'])} | "
                     f"{mib(r['after_kib'])} | {mib(r['after_kib'] - r['before_kib'])} |")
    lines.append("")
    text = "\n".join(lines)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(text)
    print("\n" + text)
    if not a.keep:
        import shutil; shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
