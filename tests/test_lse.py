"""SyncNet v2, MFCC and LSE-D/LSE-C scoring: architecture, loader rules, MFCC values, window/offset maths, files, reports."""
import csv
import json
import math
import sys
import types
import warnings
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf
import torch

from attnwav2lip.judge import cli_lse
from attnwav2lip.lse import (LSEConfig, OracleSync, SyncNetV2, calc_pdist, collect_videos,
                             face_crops, face_track, lse_scores, lse_scores_av, lse_window_count, load_syncnet_v2,
                             medfilt_zero, mfcc, mfcc_frame_count, oracle_av, read_audio_int16, read_video_frames,
                             report_markdown, score_videos, summarise_rows, sync_scores, syncnet_features, syncnet_mfcc)

torch.set_num_threads(2)


# ---------------------------------------------------------------- helpers
def write_av(path, frames, audio=None, fps=25):
    "BGR frames (+ int16 16 kHz audio) → video; PCM audio for .mkv/.avi, AAC otherwise."
    wav = None
    if audio is not None:
        wav = Path(path).with_suffix(".wav")
        sf.write(wav, audio, 16000, subtype="PCM_16")
    codec = "pcm_s16le" if str(path).endswith((".mkv", ".avi")) else "aac"
    w = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], pix_fmt_in="bgr24", fps=fps,
                                    audio_path=str(wav) if wav else None, audio_codec=codec if wav else None,
                                    ffmpeg_log_level="error")
    w.send(None)
    for f in frames: w.send(np.ascontiguousarray(f))
    w.close()
    if wav: wav.unlink()
    return Path(path)


def delay(audio, k):
    "Audio k frames later (k<0 earlier), silence-padded, same length."
    s = k * 640
    return np.concatenate([np.zeros(s, np.int16), audio[:len(audio) - s]]) if s >= 0 else \
        np.concatenate([audio[-s:], np.zeros(-s, np.int16)])


CODES = np.random.default_rng(1).integers(0, 8, 40)


@pytest.fixture(scope="module")
def oracle(): return OracleSync()


@pytest.fixture(scope="module")
def random_state():
    torch.manual_seed(0)
    return SyncNetV2().state_dict()


# ---------------------------------------------------------------- architecture
def _expected_keys():
    "The released state dict, written out from the reference table (order, names, shapes)."
    aud = [(0, "conv", (64, 1, 3, 3)), (1, "bn", 64), (4, "conv", (192, 64, 3, 3)), (5, "bn", 192),
           (8, "conv", (384, 192, 3, 3)), (9, "bn", 384), (11, "conv", (256, 384, 3, 3)), (12, "bn", 256),
           (14, "conv", (256, 256, 3, 3)), (15, "bn", 256), (18, "conv", (512, 256, 5, 4)), (19, "bn", 512)]
    fc = [(0, "conv", (512, 512)), (1, "bn", 512), (3, "conv", (1024, 512))]
    lip = [(0, "conv", (96, 3, 5, 7, 7)), (1, "bn", 96), (4, "conv", (256, 96, 1, 5, 5)), (5, "bn", 256),
           (8, "conv", (256, 256, 1, 3, 3)), (9, "bn", 256), (11, "conv", (256, 256, 1, 3, 3)), (12, "bn", 256),
           (14, "conv", (256, 256, 1, 3, 3)), (15, "bn", 256), (18, "conv", (512, 256, 1, 6, 6)), (19, "bn", 512)]
    out = []
    for tower, layers in (("netcnnaud", aud), ("netfcaud", fc), ("netfclip", fc), ("netcnnlip", lip)):
        for i, kind, shape in layers:
            if kind == "conv": out += [(f"{tower}.{i}.weight", shape), (f"{tower}.{i}.bias", shape[:1])]
            else: out += [(f"{tower}.{i}.{n}", (shape,)) for n in ("weight", "bias", "running_mean", "running_var")] + \
                         [(f"{tower}.{i}.num_batches_tracked", ())]
    return out


def test_state_dict_keys_shapes_and_counts(random_state):
    expected = _expected_keys()
    assert len(expected) == 102
    assert [(k, tuple(v.shape)) for k, v in random_state.items()] == expected
    assert all(v.dtype == (torch.int64 if k.endswith("num_batches_tracked") else torch.float32) for k, v in random_state.items())
    net = SyncNetV2()
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(net) == 13_631_616
    assert (count(net.netcnnaud), count(net.netfcaud), count(net.netcnnlip), count(net.netfclip)) == \
        (4_875_712, 788_992, 7_177_920, 788_992)


def test_forward_shapes():
    net = SyncNetV2().eval()
    with torch.no_grad():
        a, v = net(torch.randn(3, 1, 13, 20), torch.rand(1, 3, 5, 224, 224) * 255)
        assert a.shape == (3, 1024) and v.shape == (1, 1024)
        assert net.netcnnaud(torch.randn(1, 1, 13, 20)).shape == (1, 512, 1, 1)
        assert net.netcnnlip(torch.rand(1, 3, 5, 224, 224)).shape == (1, 512, 1, 1, 1)


# ---------------------------------------------------------------- loader
def test_loader_roundtrip_and_num_batches_tracked_tolerance(tmp_path, random_state):
    sd = {k: v for k, v in random_state.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "w.model")
    m = load_syncnet_v2(tmp_path / "w.model", device="cpu")
    assert not m.training and next(m.parameters()).device.type == "cpu"
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    assert load_syncnet_v2(random_state, device="cpu") is not None  # in-memory mapping, full keys


@pytest.mark.parametrize("edit,msg", [
    (lambda sd: sd.pop("netcnnlip.18.weight"), "missing"),
    (lambda sd: sd.pop("netcnnaud.1.running_mean"), "missing"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), "unexpected"),
    (lambda sd: sd.__setitem__("netfcaud.3.weight", torch.zeros(2048, 512)), "shape"),
])
def test_loader_is_strict_otherwise(random_state, edit, msg):
    sd = dict(random_state)
    edit(sd)
    with pytest.raises(ValueError, match=msg): load_syncnet_v2(sd, device="cpu")


def test_loader_rejects_prefixed_keys(random_state):
    with pytest.raises(ValueError, match="bare"): load_syncnet_v2({f"module.{k}": v for k, v in random_state.items()})


def test_loader_reads_pickled_modules(tmp_path, random_state):
    net = SyncNetV2(); net.load_state_dict(random_state)
    torch.save(net, tmp_path / "ours.model")
    assert torch.equal(load_syncnet_v2(tmp_path / "ours.model", "cpu").netfclip[3].weight, random_state["netfclip.3.weight"])
    with pytest.raises(ValueError, match="allow_pickle"): load_syncnet_v2(tmp_path / "ours.model", allow_pickle=False)
    # a whole module saved by the official code: class `S` in module `SyncNetModel`, not importable here
    mod = types.ModuleType("SyncNetModel")
    S = type("S", (SyncNetV2,), {"__module__": "SyncNetModel"})
    mod.S = S
    sys.modules["SyncNetModel"] = mod
    try:
        s = S(); s.load_state_dict(random_state)
        torch.save(s, tmp_path / "official.model")
    finally: del sys.modules["SyncNetModel"]
    loaded = load_syncnet_v2(tmp_path / "official.model", "cpu")
    assert type(loaded) is SyncNetV2 and torch.equal(loaded.netcnnaud[0].weight, random_state["netcnnaud.0.weight"])


def test_loader_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.model"): load_syncnet_v2(tmp_path / "nope.model")
    (tmp_path / "junk.model").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.model"): load_syncnet_v2(tmp_path / "junk.model")
    torch.save([1, 2, 3], tmp_path / "list.model")
    with pytest.raises(ValueError, match="state dict"): load_syncnet_v2(tmp_path / "list.model")


def test_device_is_automatic(random_state):
    assert next(load_syncnet_v2(random_state).parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------- MFCC
def _mfcc_one_frame_by_hand(x):
    "python_speech_features' recipe for one 400-sample frame, in plain Python loops."
    y = [float(x[0])] + [float(x[n]) - 0.97 * float(x[n - 1]) for n in range(1, 400)]
    P = []
    for k in range(257):
        re = sum(y[n] * math.cos(2 * math.pi * k * n / 512) for n in range(400))
        im = sum(y[n] * math.sin(2 * math.pi * k * n / 512) for n in range(400))
        P.append((re * re + im * im) / 512)
    hi = 2595 * math.log10(1 + 8000 / 700)
    b = [math.floor(513 * (700 * (10 ** (hi * j / 27 / 2595) - 1)) / 16000) for j in range(28)]
    logs = []
    for j in range(26):
        s = sum(P[i] * (i - b[j]) / (b[j + 1] - b[j]) for i in range(b[j], b[j + 1]))
        s += sum(P[i] * (b[j + 2] - i) / (b[j + 2] - b[j + 1]) for i in range(b[j + 1], b[j + 2]))
        logs.append(math.log(s))
    c = [sum(logs[n] * math.cos(math.pi * k * (2 * n + 1) / 52) for n in range(26)) * math.sqrt((1 if k == 0 else 2) / 26)
         for k in range(13)]
    c = [c[k] * (1 + 11 * math.sin(math.pi * k / 22)) for k in range(13)]
    c[0] = math.log(sum(P))
    return np.array(c)


def test_mfcc_single_frame_matches_hand_computation():
    x = np.random.default_rng(0).normal(0, 3000, 400).astype(np.int16)
    got = mfcc(x)
    assert got.shape == (1, 13)
    np.testing.assert_allclose(got[0], _mfcc_one_frame_by_hand(x), rtol=1e-9, atol=1e-9)


def test_mfcc_silence_is_log_eps_then_zeros():
    out = mfcc(np.zeros(2000, np.int16))
    eps = np.finfo(np.float64).eps
    np.testing.assert_allclose(out[:, 0], np.log(eps))
    np.testing.assert_allclose(out[:, 1:], 0, atol=1e-10)


def test_mfcc_energy_of_constant_signal_closed_form():
    # after pre-emphasis a DC value c becomes 0.03c (except sample 0); for a constant 400-sample frame a,
    # sum_{k=0..256} |X_k|^2 = (512·400a² + (400a)² + 0) / 2 = 182400 a²  →  energy = 356.25 a²
    c = 1000
    out = mfcc(np.full(400 + 160 * 5, c, np.int16))
    assert out.shape == (6, 13)
    np.testing.assert_allclose(out[1:, 0], np.log(356.25 * (c - 0.97 * c) ** 2), rtol=1e-10)


def test_mfcc_energy_parseval():
    x = np.random.default_rng(1).normal(0, 2000, 400 + 160 * 9).astype(np.int16).astype(np.float64)
    y = np.concatenate([x[:1], x[1:] - 0.97 * x[:-1]])
    for t, c0 in enumerate(mfcc(x)[:, 0]):
        f = y[160 * t:160 * t + 400]
        half = (512 * (f ** 2).sum() + f.sum() ** 2 + (f * (-1.0) ** np.arange(400)).sum() ** 2) / 2
        assert math.isclose(c0, math.log(half / 512), rel_tol=1e-10)


def test_mfcc_int16_scaling_shifts_only_c0():
    x = np.random.default_rng(2).normal(0, 4000, 8000).astype(np.int16)
    a, b = mfcc(x), mfcc(x / 32768)
    np.testing.assert_allclose(a[:, 0] - b[:, 0], 2 * np.log(32768), rtol=1e-10)
    np.testing.assert_allclose(a[:, 1:], b[:, 1:], atol=1e-8)


@pytest.mark.parametrize("n,frames", [(1, 1), (399, 1), (400, 1), (401, 2), (560, 2), (561, 3), (16000, 99), (16080, 99), (16081, 100)])
def test_mfcc_frame_count(n, frames):
    assert mfcc_frame_count(n) == frames == len(mfcc(np.ones(n, np.int16)))


def test_mfcc_layout_and_errors():
    m = syncnet_mfcc(np.random.default_rng(3).integers(-3000, 3000, 3200).astype(np.int16))
    assert m.shape == (13, 19) and m.dtype == np.float32
    with pytest.raises(ValueError, match="empty"): mfcc(np.zeros(0))


def test_mfcc_matches_python_speech_features():
    psf = pytest.importorskip("python_speech_features")
    x = np.random.default_rng(4).normal(0, 3000, 23457).astype(np.int16)
    np.testing.assert_allclose(mfcc(x), psf.mfcc(x, 16000), rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- windows, distances, offsets
def test_window_count():
    assert lse_window_count(6, 3840) == 1
    assert lse_window_count(5, 100_000) == 0
    assert lse_window_count(100, 640 * 50 + 639) == 45
    assert lse_window_count(30, 10**6) == 25


class Recorder(torch.nn.Module):
    "Records what each window feeds the towers."
    def __init__(self): super().__init__(); self.lip, self.aud = [], []
    def forward_lip(self, x): self.lip.append(x.clone()); return torch.zeros(len(x), 2)
    def forward_aud(self, x): self.aud.append(x.clone()); return torch.zeros(len(x), 2)


def test_syncnet_features_windows_and_batches():
    rng = np.random.default_rng(5)
    frames = rng.integers(0, 256, (50, 8, 8, 3), dtype=np.uint8)
    cc = rng.normal(size=(13, 200)).astype(np.float32)
    rec = Recorder().train()
    lip, aud = syncnet_features(rec, frames, cc, n_windows=45, batch_size=20)
    assert lip.shape == aud.shape == (45, 2) and rec.training  # mode restored
    assert [len(b) for b in rec.lip] == [20, 20, 5]
    lips, auds = torch.cat(rec.lip), torch.cat(rec.aud)
    assert lips.shape == (45, 3, 5, 8, 8) and auds.shape == (45, 1, 13, 20)
    i = 23
    np.testing.assert_array_equal(lips[i].permute(1, 2, 3, 0).numpy(), frames[i:i + 5])  # raw BGR values, time axis 1
    np.testing.assert_array_equal(auds[i, 0].numpy(), cc[:, 4 * i:4 * i + 20])
    with pytest.raises(ValueError): syncnet_features(rec, frames, cc, n_windows=0)


def test_calc_pdist_matches_definition():
    g = torch.Generator().manual_seed(0)
    V, A = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    d = calc_pdist(V, A, vshift=3)
    assert d.shape == (7, 7)
    for i in range(7):
        for k in range(7):
            j = i + k - 3
            a = A[j] if 0 <= j < 7 else torch.zeros(5)
            assert torch.isclose(d[i, k], torch.linalg.vector_norm(V[i] - a + 1e-6), rtol=1e-6)


def test_sync_scores_min_median_offset():
    mdist = torch.tensor([5.0, 3.0, 4.0, 2.0, 6.0, 2.0, 7.0])  # vshift 3; tie at 3 and 5 → first wins
    d = mdist.repeat(4, 1)                                  # (n=4, K=7): time mean = mdist
    res = sync_scores(d, vshift=3)
    assert res["lse_d"] == 2.0 and res["offset"] == 3 - 3
    assert res["lse_c"] == pytest.approx(4.0 - 2.0)         # median of 7 values = 4th smallest = 4
    assert res["mdist"] == pytest.approx(mdist.tolist())


@pytest.mark.parametrize("k", [-15, -5, 0, 1, 9, 15])
def test_oracle_offsets_are_exact(oracle, k):
    frames, audio = oracle_av(CODES)
    res = lse_scores_av(frames, delay(audio, k), oracle)
    assert res["offset"] == -k and res["n_windows"] == 35


def test_lse_scores_av_input_errors(oracle):
    frames, audio = oracle_av(CODES[:10])
    with pytest.raises(ValueError, match="int16"): lse_scores_av(frames, audio.astype(np.float32), oracle)
    with pytest.raises(ValueError, match="uint8"): lse_scores_av(frames.astype(np.float32), audio, oracle)
    with pytest.raises(ValueError, match="too short"): lse_scores_av(frames[:5], audio, oracle)
    with pytest.raises(ValueError, match="too short"): lse_scores_av(frames, audio[:3839], oracle)


# ---------------------------------------------------------------- files
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    frames, audio = oracle_av(CODES)
    out = {f"shift{k:+d}": write_av(d / f"shift{k:+d}.mkv", frames, delay(audio, k)) for k in (0, 4, -2)}
    out["aac"] = write_av(d / "aac.mp4", frames, audio)
    out["silent"] = write_av(d / "silent.mp4", frames)
    out["tiny"] = write_av(d / "tiny.mkv", *oracle_av(CODES[:5]))
    out["fps30"] = write_av(d / "fps30.mkv", frames, audio, fps=30)
    (d / "junk.mp4").write_bytes(b"garbage")
    out["junk"] = d / "junk.mp4"
    return out


def test_read_audio_and_frames(clips):
    frames, audio = oracle_av(CODES)
    a = read_audio_int16(clips["shift+0"])
    assert a.dtype == np.int16 and np.array_equal(a, audio)  # PCM round trip is exact
    f, fps = read_video_frames(clips["shift+0"])
    fj, _ = read_video_frames(clips["shift+0"], official_jpeg=True)
    assert f.shape == fj.shape == (40, 64, 64, 3) and fps == 25
    assert np.abs(f.astype(int) - frames).max() <= 8 and np.abs(fj.astype(int) - frames).max() <= 8  # codec + colour conversion


@pytest.mark.parametrize("official_jpeg", [False, True])
def test_lse_scores_file(clips, oracle, official_jpeg):
    cfg = LSEConfig(official_jpeg=official_jpeg)
    assert lse_scores(clips["shift+4"], oracle, cfg)["offset"] == -4
    res = lse_scores(clips["shift+0"], oracle, cfg)
    assert res["offset"] == 0 and res["lse_d"] < 0.05 and res["video"].endswith("shift+0.mkv")


def test_lse_scores_aac_clip(clips, oracle):
    assert abs(lse_scores(clips["aac"], oracle)["offset"]) <= 1  # lossy audio codec: the oracle still finds sync


def test_lse_scores_bad_files(clips, oracle, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.mp4"): lse_scores(tmp_path / "missing.mp4", oracle)
    with pytest.raises(ValueError, match="silent.mp4: no audio"): lse_scores(clips["silent"], oracle)
    with pytest.raises(ValueError, match="tiny.mkv: too short"): lse_scores(clips["tiny"], oracle)
    with pytest.raises(ValueError, match="junk.mp4"): lse_scores(clips["junk"], oracle)


def test_lse_scores_warns_on_fps(clips, oracle):
    with pytest.warns(UserWarning, match="30 fps"): lse_scores(clips["fps30"], oracle)


# ---------------------------------------------------------------- face crops
class FixedBox:
    def __init__(self, box): self.box = box
    def detect(self, frames): return [self.box] * len(frames)


def test_face_crop_geometry():
    frames = np.random.default_rng(6).integers(0, 255, (3, 100, 100, 3), dtype=np.uint8)
    # box at the top-left corner: s = 10, centre (10, 10); pad = int(10·1.8) = 18 rows/cols of value 110
    crops = face_crops(frames, FixedBox((0, 0, 20, 20, 1.0)).detect(frames), size=28, median_kernel=1)
    # padded rows [18+10-10, 18+10+18) = [18, 46) → frame rows [0, 28); cols [28-14, 28+14) = [14, 42) → frame cols [-4, 24)
    expect = np.full((28, 28, 3), 110, np.uint8)
    expect[:, 4:] = frames[0, 0:28, 0:24]
    np.testing.assert_array_equal(crops[0], expect)


def test_face_track_and_medfilt():
    assert face_track([None, (0, 0, 2, 2, .9), None, None, (3, 3, 5, 5)])[:, 0].tolist() == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="no face"): face_track([None, None])
    with pytest.raises(ValueError, match="boxes for"): face_crops(np.zeros((3, 10, 10, 3), np.uint8), [None])
    x = np.random.default_rng(7).normal(size=30)
    signal = pytest.importorskip("scipy.signal")
    np.testing.assert_allclose(medfilt_zero(x, 13), signal.medfilt(x, 13))


def test_crop_path_with_injected_detector(oracle):
    frames, audio = oracle_av(CODES, size=128)
    res = lse_scores_av(frames, delay(audio, 2), oracle, LSEConfig(crop_faces=True), detector=FixedBox((40, 40, 80, 80, 1)))
    assert res["offset"] == -2


def test_crop_path_with_package_detector(oracle):
    pytest.importorskip("attnwav2lip.faces")
    data = pytest.importorskip("skimage.data")
    face = np.ascontiguousarray(data.astronaut()[..., ::-1])  # BGR
    frames = np.stack([face] * 8)
    res = lse_scores_av(frames, oracle_av(CODES[:8])[1], oracle, LSEConfig(crop_faces=True))
    assert res["n_windows"] == 3


# ---------------------------------------------------------------- report and CLI
def test_score_videos_report(clips, oracle, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join([str(clips["shift+0"]), str(clips["shift+4"]), str(clips["shift-2"]), "# comment", "",
                              str(clips["silent"]), str(clips["tiny"]), "gone.mp4"]) + "\n")
    s = score_videos(lst, oracle, tmp_path / "rep", progress=False, meta=dict(weights="oracle"))
    assert (s["n_videos"], s["n_scored"], s["n_failed"]) == (6, 3, 3)
    assert s["weights"] == "oracle" and s["config"]["vshift"] == 15
    rows = list(csv.DictReader((tmp_path / "rep" / "lse_per_video.csv").open()))
    assert [r["status"] for r in rows] == ["ok"] * 3 + ["error"] * 3
    d = np.array([float(r["lse_d"]) for r in rows[:3]])
    saved = json.loads((tmp_path / "rep" / "lse_summary.json").read_text())
    assert saved["lse_d"]["mean"] == pytest.approx(d.mean()) and saved["lse_d"]["std"] == pytest.approx(d.std())
    assert saved["offset"]["mean"] == pytest.approx((0 - 4 + 2) / 3)
    errors = {Path(f["video"]).name: f["error"] for f in saved["failed"]}
    assert "no audio" in errors["silent.mp4"] and "too short" in errors["tiny.mkv"]
    assert errors["gone.mp4"].startswith("FileNotFoundError") and str(tmp_path) in [f["video"] for f in saved["failed"]][2]
    md = (tmp_path / "rep" / "lse_summary.md").read_text()
    assert "LSE-D ↓" in md and "Not scored (3)" in md
    assert not list((tmp_path / "rep").glob(".*tmp"))


def test_collect_videos(clips, tmp_path):
    folder = clips["shift+0"].parent
    found = collect_videos(folder)
    assert found == sorted(found) and clips["junk"] in found and all(p.suffix in (".mkv", ".mp4") for p in found)
    assert collect_videos([clips["aac"], tmp_path / "x.mp4"]) == [clips["aac"], tmp_path / "x.mp4"]
    with pytest.raises(ValueError, match="no videos"): score_videos(tmp_path, OracleSync(), tmp_path / "r", progress=False)


def test_summary_when_everything_fails():
    s = summarise_rows([dict(video="a.mp4", status="error", error="ValueError: x")])
    assert s["lse_d"] == dict(mean=None, std=None, n=0) and s["n_failed"] == 1
    assert "| LSE-D ↓ | – | 0 |" in report_markdown(s)


def test_fps_warning_goes_to_notes(clips, oracle, tmp_path):
    score_videos([clips["fps30"]], oracle, tmp_path, progress=False)
    row = next(csv.DictReader((tmp_path / "lse_per_video.csv").open()))
    assert row["status"] == "ok" and "30 fps" in row["notes"] and row["error"] == ""


def test_cli(tmp_path, random_state, clips, capsys, monkeypatch):
    frames = np.random.default_rng(8).integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    clip = write_av(tmp_path / "c.mkv", frames, oracle_av(CODES[:10])[1])
    torch.save(random_state, tmp_path / "syncnet_v2.model")
    args = ["--weights", str(tmp_path / "syncnet_v2.model"), "--device", "cpu", "--out"]
    assert cli_lse([str(clip), *args, str(tmp_path / "out")]) == 0
    s = json.loads((tmp_path / "out" / "lse_summary.json").read_text())
    assert s["n_scored"] == 1 and s["weights"].endswith("syncnet_v2.model") and math.isfinite(s["lse_d"]["mean"])
    assert cli_lse([str(clips["silent"]), *args, str(tmp_path / "out2")]) == 1
    monkeypatch.chdir(tmp_path)   # the failing calls below write no report into the default ./lse_report
    assert cli_lse([str(clip), "--weights", str(tmp_path / "none.model")]) == 2
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    assert cli_lse([str(clip), "--weights", str(tmp_path / "other.pth")]) == 2
    err = capsys.readouterr().err
    assert "none.model: judge checkpoint not found" in err and "other.pth: state dict does not match SyncNetV2" in err
    assert not (tmp_path / "lse_report").exists()


def test_cli_takes_a_judge_checkpoint_and_its_view(tmp_path, clips, monkeypatch):
    "A train-judge checkpoint: its size and its face-track view come from the checkpoint."
    from attnwav2lip.judge import JudgeConfig
    cfg = JudgeConfig(img_size=64, width=0.0625, embed_dim=16)
    torch.save({"state_dict": SyncNetV2(cfg.model_config()).state_dict(), "global_step": 1, "format": 1,
                "config": {"judge": {"crop_faces": True, "crop_scale": 0.4, "detector": "blazeface"},
                           "model": {"img_size": 64, "width": 0.0625, "embed_dim": 16}}}, tmp_path / "judge.pth")
    seen = {}
    def fake_score(inputs, model, out_dir, cfg, **kw):
        seen.update(cfg=cfg, img=model.cfg.img_size)
        return {"lse_d": {"mean": 1.0, "std": 0.0}, "lse_c": {"mean": 1.0, "std": 0.0}, "n_scored": 1, "n_videos": 1}
    monkeypatch.setattr("attnwav2lip.judge.score_videos", fake_score)
    assert cli_lse([str(clips["silent"]), "--weights", str(tmp_path / "judge.pth"), "--vshift", "7"]) == 0
    assert seen["img"] == 64 and seen["cfg"] == LSEConfig(img_size=64, crop_faces=True, vshift=7)


def test_score_videos_crop_path_with_injected_detector(clips, oracle, tmp_path):
    s = score_videos([clips["shift+4"]], oracle, tmp_path, LSEConfig(crop_faces=True),
                     detector=FixedBox((16, 16, 48, 48, 1.0)), progress=False)
    assert s["n_scored"] == 1 and s["offset"]["mean"] == -4 and s["config"]["crop_faces"] is True


def test_read_video_frames_resizes_while_reading(clips):
    full, _ = read_video_frames(clips["shift+0"])
    small, _ = read_video_frames(clips["shift+0"], size=32)
    assert small.shape == (40, 32, 32, 3)
    assert np.abs(small.astype(int) - full[:, ::2, ::2]).max() <= 2  # flat frames: resizing changes ~nothing
