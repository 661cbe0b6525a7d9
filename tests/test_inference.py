"""Mechanism tests of `attnwav2lip.inference`: real face photo, synthesised speech, corpus clip, faceless frames,
looping, caching, checkpoints of both formats, and bad inputs that must fail cleanly without leaving files."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf
import torch
from skimage import data as skdata

import attnwav2lip.inference as inf
from attnwav2lip.audio import load_wav
from attnwav2lip.models import AttnWav2Lip, ModelConfig, QualityDiscriminator, SyncNetColor
from attnwav2lip.synthetic import speak

ROOT = Path(__file__).resolve().parents[1]
SMALL = ModelConfig(img_size=48, width=0.25, attention="cbam")


def write_video(path: Path, frames, fps: float = 25) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in frames: writer.write(f)
    writer.release()
    return path


def read_video(path: Path) -> tuple:
    "(frames, fps) decoded with OpenCV."
    cap = cv2.VideoCapture(str(path))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, f = cap.read()
        if not ok: break
        frames.append(f)
    cap.release()
    return frames, fps


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    d = tmp_path_factory.mktemp("inference")
    astronaut = np.ascontiguousarray(skdata.astronaut()[..., ::-1])  # RGB → BGR
    cv2.imwrite(str(d / "astronaut.png"), astronaut)
    face = cv2.resize(astronaut, (256, 256))
    grey = np.full_like(face, 128)
    frames = [np.roll(face, 2 * i, axis=1) for i in range(12)]
    frames[5] = frames[6] = grey                              # two frames without a face
    write_video(d / "faceless.mp4", frames)
    speech = speak("Hello there. This is a test of lip sync.", sample_rate=22050)  # espeak-ng; resampled on loading
    sf.write(d / "speech.wav", speech.wav, speech.sample_rate)
    sr = 16000
    sf.write(d / "short.wav", (0.2 * np.sin(2 * np.pi * 220 * np.arange(int(0.3 * sr)) / sr)).astype(np.float32), sr)
    torch.manual_seed(0)
    model = AttnWav2Lip(SMALL).eval()
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "config": {"model": SMALL.to_dict()}},
               d / "small.pth")
    return dict(dir=d, model=model, checkpoint=d / "small.pth", image=d / "astronaut.png", video=d / "faceless.mp4",
                speech=d / "speech.wav", short=d / "short.wav")


def run(assets, tmp_path, face=None, audio=None, checkpoint=None, name="out.mp4", **options):
    options = dict(cache_dir=str(tmp_path / "cache"), progress=False, **options)
    out = tmp_path / "out" / name
    report = inf.lipsync(face or assets["image"], audio or assets["speech"], checkpoint or assets["model"], out, **options)
    return out, report


def only_outputs(tmp_path) -> list:
    "Files in the output folder (temporary files start with a dot)."
    d = tmp_path / "out"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_still_image_speaks_for_the_whole_audio(assets, tmp_path):
    out, report = run(assets, tmp_path, checkpoint=assets["checkpoint"])
    seconds = len(load_wav(assets["speech"])) / 16000
    frames, fps = read_video(out)
    assert fps == 25 and frames[0].shape == (512, 512, 3)
    assert len(frames) == report["frames"] == round(seconds * 25)
    assert report["frames_with_face"] == report["frames"] and report["source_frames"] == 1
    assert abs(len(load_wav(out)) / 16000 - seconds) < 0.05          # the driving audio is in the file, whole
    assert only_outputs(tmp_path) == ["out.mp4"]


def test_faceless_frames_pass_through_unchanged(assets, tmp_path):
    source = inf.FaceSource(assets["video"])
    originals = list(source.frames())
    cfg = inf.SyncConfig(cache_dir=str(tmp_path / "cache"), progress=False)
    mels, _ = inf.driving_mels(assets["speech"], source.fps)
    boxes, _ = inf.face_track(source, len(mels), cfg)
    assert [i for i, b in enumerate(boxes) if b is None] == [5, 6]
    gen = inf.InferenceGenerator(assets["model"], "cpu")
    out = list(inf.sync_frames(source, mels, boxes, gen, batch_size=8))
    for i, frame in enumerate(out):
        if i % 12 in (5, 6): np.testing.assert_array_equal(frame, originals[i % 12])   # exact, before encoding
        else: assert np.abs(frame.astype(int) - originals[i % 12]).max() > 0
    # through h264 and back (OpenCV's decoder truncates YUV → BGR: 1–3 levels darker) the faceless frames stay close
    path, report = run(assets, tmp_path, face=assets["video"])
    decoded, fps = read_video(path)
    assert fps == 25 and len(decoded) == report["frames"] == len(mels)
    for i in (5, 6, 17, 18):
        assert np.abs(decoded[i].astype(float) - originals[i % 12]).max() <= 3


def test_audio_longer_than_video_loops_it(assets, tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (64, 80, 3), dtype=np.uint8) for _ in range(10)]  # noise: no face anywhere
    source = inf.FaceSource(write_video(tmp_path / "noise.mp4", frames))
    originals = list(source.frames())
    mels, _ = inf.driving_mels(assets["speech"], source.fps)
    boxes, _ = inf.face_track(source, len(mels), inf.SyncConfig(cache_dir="", progress=False))
    assert len(boxes) == 10 and all(b is None for b in boxes)
    out = list(inf.sync_frames(source, mels, boxes, inf.InferenceGenerator(assets["model"], "cpu")))
    assert len(out) == len(mels) > 30
    for i, frame in enumerate(out): np.testing.assert_array_equal(frame, originals[i % 10])


def test_static_video_and_frame_rate(assets, tmp_path):
    frames, _ = read_video(assets["video"])
    video30 = write_video(tmp_path / "v30.mp4", frames, fps=30)
    out, report = run(assets, tmp_path, face=video30, static=True)
    decoded, fps = read_video(out)
    assert report["source_frames"] == 1 and fps == 30
    assert len(decoded) == round(len(load_wav(assets["speech"])) / 16000 * 30)


def test_odd_size_is_kept(assets, tmp_path):
    out, report = run(assets, tmp_path, crop=(100, 275, 150, 251))   # 101 × 175 of the photo, face inside
    decoded, _ = read_video(out)
    assert decoded[0].shape == (175, 101, 3) and report["size"] == (101, 175)


def test_second_run_with_other_audio_skips_detection(assets, tmp_path, monkeypatch):
    detected = []
    real = inf.get_detector

    class Counting:
        def __init__(self, *a, **kw): self.det = real(*a, **kw)
        def detect(self, frames): detected.append(len(frames)); return self.det.detect(frames)

    monkeypatch.setattr(inf, "get_detector", Counting)
    _, first = run(assets, tmp_path, face=assets["video"], audio=assets["short"])      # 8 frames needed
    assert sum(detected) == 8 and not first["detections_cached"]
    _, second = run(assets, tmp_path, face=assets["video"], audio=assets["short"], name="again.mp4")
    assert sum(detected) == 8 and second["detections_cached"]
    _, longer = run(assets, tmp_path, face=assets["video"], name="long.mp4")          # all 12 frames: 4 new
    assert sum(detected) == 12 and not longer["detections_cached"]
    _, other_pads = run(assets, tmp_path, face=assets["video"], pads=(0, 20, 0, 0), name="pads.mp4")
    assert sum(detected) == 12 and other_pads["detections_cached"]  # pads are applied after the cache
    _, resized = run(assets, tmp_path, face=assets["video"], resize_factor=2, name="half.mp4")
    assert sum(detected) == 24                                      # other frames: detected again


def test_corpus_clip(assets, tmp_path):
    clips = sorted((ROOT / "data").rglob("*.mp4")) if (ROOT / "data").is_dir() else []
    if not clips: pytest.skip("no embedded corpus under data/")
    clip = clips[0]
    frames, fps = read_video(clip)
    out, report = run(assets, tmp_path, face=clip, audio=clip)          # audio taken from the clip's own container
    decoded, out_fps = read_video(out)
    assert out_fps == pytest.approx(fps) and decoded[0].shape == frames[0].shape
    assert len(decoded) == report["frames"] == round(len(load_wav(clip)) / 16000 * fps)
    assert report["frames_with_face"] > 0.8 * report["frames"]


def test_checkpoint_formats(tmp_path):
    torch.manual_seed(1)
    paper = AttnWav2Lip(ModelConfig())
    torch.save({"state_dict": {f"module.{k}": v for k, v in paper.state_dict().items()}}, tmp_path / "wav2lip.pth")
    loaded = inf.load_generator(tmp_path / "wav2lip.pth", "cpu")
    assert loaded.cfg == ModelConfig() and loaded.cfg.attention == "none"
    assert all(torch.equal(a, b) for a, b in zip(paper.state_dict().values(), loaded.state_dict().values()))
    torch.save(AttnWav2Lip(ModelConfig(attention="spatial")).state_dict(), tmp_path / "bare.pth")
    assert inf.load_generator(tmp_path / "bare.pth", "cpu").cfg.attention == "spatial"   # no config: variant from keys


@pytest.mark.parametrize("network, words", [(SyncNetColor, "SyncNet_color"), (QualityDiscriminator, "discriminator")])
def test_wrong_kind_of_checkpoint(assets, tmp_path, network, words):
    torch.save({"state_dict": network(SMALL).state_dict(), "config": {"model": SMALL.to_dict()}}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match=words): run(assets, tmp_path, checkpoint=tmp_path / "x.pth")
    assert only_outputs(tmp_path) == []


def test_bad_inputs_fail_cleanly(assets, tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (d / "corrupt.png").write_bytes(b"\x89PNG not really")
    (d / "corrupt.pth").write_bytes(b"not a checkpoint")
    sf.write(d / "empty.wav", np.zeros(0, np.float32), 16000)
    cases = [
        (dict(face=d / "missing.mp4"), FileNotFoundError, "face file not found"),
        (dict(audio=d / "missing.wav"), FileNotFoundError, "missing.wav"),
        (dict(checkpoint=d / "missing.pth"), FileNotFoundError, "missing.pth"),
        (dict(face=d / "corrupt.mp4"), ValueError, "cannot be decoded"),
        (dict(face=d / "corrupt.png"), ValueError, "cannot be decoded"),
        (dict(audio=d / "empty.wav"), ValueError, "empty"),
        (dict(audio=assets["image"]), ValueError, "astronaut.png"),
        (dict(checkpoint=d / "corrupt.pth"), ValueError, "corrupt.pth"),
    ]
    for kw, exc, words in cases:
        with pytest.raises(exc, match=words): run(assets, tmp_path, **kw)
        assert only_outputs(tmp_path) == [], kw


def test_interrupted_run_keeps_the_old_output(assets, tmp_path, monkeypatch):
    out = tmp_path / "out" / "out.mp4"
    out.parent.mkdir()
    out.write_bytes(b"previous result")
    calls = []

    def failing(self, mels, crops):
        calls.append(1)
        if len(calls) > 1: raise KeyboardInterrupt
        return np.zeros((len(mels), self.img_size, self.img_size, 3), np.float32)

    monkeypatch.setattr(inf.InferenceGenerator, "__call__", failing)
    with pytest.raises(KeyboardInterrupt): run(assets, tmp_path, face=assets["video"], batch_size=4)
    assert out.read_bytes() == b"previous result" and only_outputs(tmp_path) == ["out.mp4"]


def test_precision_falls_back_to_fp32_outside_tolerance(assets):
    mels = np.random.default_rng(0).standard_normal((4, 80, 16)).astype(np.float32)
    crops = np.random.default_rng(1).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    strict = inf.InferenceGenerator(assets["model"], "cpu", precision="auto", tolerance=0.0)
    ref = inf.InferenceGenerator(assets["model"], "cpu", precision="fp32")(mels, crops)
    np.testing.assert_allclose(strict(mels, crops), ref, atol=1e-5)
    assert strict.precision == "fp32"
    if inf.bf16_supported(torch.device("cpu")): assert strict.bf16_error > 0
    loose = inf.InferenceGenerator(assets["model"], "cpu", precision="auto", tolerance=1.0)
    loose(mels, crops)
    assert loose.precision == ("bf16" if inf.bf16_supported(torch.device("cpu")) else "fp32")


def test_cli(assets, tmp_path, capsys):
    out = tmp_path / "out" / "cli.mp4"
    base = ["--audio", str(assets["short"]), "--checkpoint", str(assets["checkpoint"]), "--outfile", str(out),
            "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    assert inf.cli_sync(["--face", str(assets["video"]), *base, "--pads", "0", "20", "0", "0", "--nosmooth",
                         "--box", "-1", "-1", "-1", "-1", "--resize_factor", "1", "--batch-size", "4"]) == 0
    assert out.is_file() and "8 frames" in capsys.readouterr().out
    assert inf.cli_sync(["--face", str(assets["video"]), *base, "--box", "40", "200", "60", "200"]) == 0
    assert inf.cli_sync(["--face", str(tmp_path / "nope.mp4"), *base]) == 1
    assert "face file not found" in capsys.readouterr().err
    assert inf.cli_sync(["--face", str(assets["video"]), *base, "--detector", "s3fd"]) == 2


# ---- frame-exact audio/video accounting and bounded memory ----

BITS = 8  # frame index written as a barcode of 8 blocks along the top edge (readable through h264)


def barcode_frame(i: int, size=(96, 64)) -> np.ndarray:
    "A frame (h=size[1], w=size[0]) with a smooth gradient and its index `i` as black/white 12×12 blocks at the top."
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    frame = np.stack([60 + x, 90 + y, 120 + (x + y) // 2], -1).clip(0, 255).astype(np.uint8)
    for b in range(BITS):
        frame[:12, 12 * b:12 * b + 12] = 255 if (i >> b) & 1 else 0
    return frame


def read_barcode(frame: np.ndarray) -> int:
    return sum(1 << b for b in range(BITS) if frame[2:10, 12 * b + 2:12 * b + 10].mean() > 128)


def barcode_video(path: Path, n: int, fps) -> Path:
    "n barcode frames at exactly `fps` (h264, through the package's writer; its audio track is irrelevant here)."
    tone = path.with_suffix(".wav")
    sf.write(tone, (0.1 * np.sin(np.arange(16000) * 0.3)).astype(np.float32), 16000)
    with inf.Mp4Writer(path, (96, 64), fps, tone, crf=12) as w:
        for i in range(n): w.write(barcode_frame(i))
    return path


def decoded_with_times(path: Path) -> tuple:
    "(frames, presentation times in ms, fps) of a video, decoded with OpenCV."
    cap = cv2.VideoCapture(str(path))
    fps, frames, times = cap.get(cv2.CAP_PROP_FPS), [], []
    while True:
        ok, f = cap.read()
        if not ok: break
        frames.append(f); times.append(cap.get(cv2.CAP_PROP_POS_MSEC))
    cap.release()
    return frames, np.array(times), fps


@pytest.fixture(scope="module")
def light():
    "A prepared generator without attention, fp32 (no precision probe): these tests are about frames, not faces."
    torch.manual_seed(0)
    return inf.InferenceGenerator(AttnWav2Lip(ModelConfig(img_size=48, width=0.25, attention="none")).eval(), "cpu",
                                  precision="fp32")


FRAME_RATES = {"24": 24.0, "25": 25.0, "29.97": 30000 / 1001, "30": 30.0, "60": 60.0}


@pytest.mark.parametrize("fps", FRAME_RATES.values(), ids=FRAME_RATES.keys())
def test_output_frames_are_round_audio_seconds_times_fps(assets, light, tmp_path, fps):
    video = barcode_video(tmp_path / "barcode.mp4", 12, fps)
    seconds = 0.63                                                  # not a whole number of frames at any of these rates
    audio = tmp_path / "speech.wav"
    sf.write(audio, load_wav(assets["speech"])[:round(seconds * 16000)], 16000)
    out, report = run(assets, tmp_path, face=video, audio=audio, checkpoint=light, box=(20, 64, 10, 90), batch_size=8)
    n = round(seconds * fps)                                        # 15, 16, 19, 19, 38
    frames, times, out_fps = decoded_with_times(out)
    assert report["frames"] == len(frames) == n and report["audio_seconds"] == pytest.approx(seconds)
    assert out_fps == pytest.approx(fps, rel=1e-9)                  # the exact rate (30000/1001), not a rounded one
    assert abs(report["video_seconds"] - seconds) <= 0.5 / fps      # video and audio end within half a frame
    np.testing.assert_allclose(times, 1000 * np.arange(n) / fps, atol=0.5)   # frame i at i / fps
    assert [read_barcode(f) for f in frames] == [i % 12 for i in range(n)]  # source frame i mod 12 (the video loops)
    assert abs(len(load_wav(out)) / 16000 - seconds) < 0.05          # the whole audio is in the file


@pytest.mark.parametrize("fps", [24.0, 30000 / 1001], ids=["24", "29.97"])
def test_still_image_is_looped_for_the_audio_length(assets, light, tmp_path, fps):
    image = tmp_path / "still.png"
    cv2.imwrite(str(image), barcode_frame(77))
    out, report = run(assets, tmp_path, face=image, audio=assets["short"], checkpoint=light, fps=fps,
                      box=(20, 64, 10, 90))
    frames, times, out_fps = decoded_with_times(out)
    n = round(0.3 * fps)
    assert report["frames"] == len(frames) == n and out_fps == pytest.approx(fps, rel=1e-9)
    np.testing.assert_allclose(times, 1000 * np.arange(n) / fps, atol=0.5)
    assert all(read_barcode(f) == 77 for f in frames)


def test_faceless_frames_keep_their_place_and_time(assets, light, tmp_path):
    n = 40
    video = barcode_video(tmp_path / "barcode.mp4", n, 25)
    faceless = {10, 11, 12, 13, 30}
    track = np.array([[np.nan] * 4 if i in faceless else [10, 20, 90, 64] for i in range(n)], float)
    np.save(tmp_path / "boxes.npy", track)
    audio = tmp_path / "speech.wav"
    sf.write(audio, load_wav(assets["speech"])[:n * 640], 16000)      # exactly 40 frames of audio at 25 fps
    out, report = run(assets, tmp_path, face=video, audio=audio, checkpoint=light, detector="boxes", nosmooth=True,
                      pads=(0, 0, 0, 0), detector_options={"source": str(tmp_path / "boxes.npy")}, batch_size=8,
                      face_det_batch_size=16)
    originals, _, _ = decoded_with_times(video)
    frames, times, _ = decoded_with_times(out)
    assert report["frames"] == len(frames) == n and report["frames_with_face"] == n - len(faceless)
    np.testing.assert_allclose(times, 40 * np.arange(n), atol=0.5)   # every frame at i / 25 s
    assert [read_barcode(f) for f in frames] == list(range(n))        # every frame in its own place
    for i in range(n):
        diff = np.abs(frames[i].astype(int) - originals[i])[20:64, 10:90]  # the face box
        if i in faceless: assert diff.mean() < 3, i                   # unchanged (one more h264 round trip, and
        else: assert diff.mean() > 6, i                               # OpenCV's decoder reads 1–3 levels darker)


def test_decoded_frames_alive_stay_within_a_batch(assets, light, tmp_path, monkeypatch):
    "Memory is bounded by design: however long the video, only about one batch of decoded frames exists at a time."
    import weakref
    rng = np.random.default_rng(0)
    video = write_video(tmp_path / "long.mp4", [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(150)])
    alive, peak, total = [0], [0], [0]
    real_prepare = inf.FaceSource.prepare

    def counted(self, frame):
        out = real_prepare(self, frame)
        alive[0] += 1; total[0] += 1; peak[0] = max(peak[0], alive[0])
        weakref.finalize(out, lambda: alive.__setitem__(0, alive[0] - 1))
        return out

    monkeypatch.setattr(inf.FaceSource, "prepare", counted)
    audio = tmp_path / "speech.wav"
    sf.write(audio, (0.1 * rng.standard_normal(140 * 640)).astype(np.float32), 16000)   # 140 of the 150 frames
    track = [(8, 8, 56, 40, 1.0) if i % 5 == 0 else None for i in range(150)]
    _, report = run(assets, tmp_path, face=video, audio=audio, checkpoint=light, batch_size=8, face_det_batch_size=8)
    _, boxed = run(assets, tmp_path, face=video, audio=audio, checkpoint=light, batch_size=8, detector="boxes",
                   detector_options={"source": track}, name="boxed.mp4")                # BlazeFace pass, then a track
    assert report["frames"] == boxed["frames"] == 140 and boxed["frames_with_face"] == 28
    assert total[0] >= 3 * 140                                       # detection pass + two generation passes
    assert peak[0] <= 8 + 3, peak[0]                                 # one batch, the first frame kept, one in hand
