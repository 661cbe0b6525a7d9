"""The evaluation judge: config rules, splits, views, batches and masks, both losses, audio shifts, short training runs."""
import json
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from attnwav2lip.cli import cli_train_judge
from attnwav2lip.judge import (JudgeConfig, SyncClip, contrastive_loss, judge_lse_config, judge_report,
                               judge_split, load_judge, load_sync_clip, multiway_loss, padded_pairs, pair_distances,
                               sample_batch, shift_audio, split_clips, train_judge)
from attnwav2lip.faces import get_detector
from attnwav2lip.lse import (LSEConfig, OracleSync, SyncNetV2, SyncNetV2Config, face_crops, lse_scores_av, oracle_av,
                             read_video_frames)

torch.set_num_threads(2)
CORPUS = Path(__file__).resolve().parents[1] / "data" / "synthetic"

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- a tiny LRS2-layout corpus
def write_clip(path, frames, audio):
    "BGR frames + int16 16 kHz audio → h264/aac mp4."
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = path.with_suffix(".wav")
    sf.write(wav, audio, 16000, subtype="PCM_16")
    w = imageio_ffmpeg.write_frames(str(path), frames.shape[2:0:-1], pix_fmt_in="bgr24", fps=25, audio_path=str(wav),
                                    audio_codec="aac", ffmpeg_log_level="error", macro_block_size=1)
    w.send(None)
    for f in frames: w.send(np.ascontiguousarray(f))
    w.close()
    wav.unlink()


def make_corpus(root, splits={"train": 2, "val": 3, "test": 4}, size=64, seed=0):
    """Oracle clips (grey level and loudness follow one code sequence) in the corpus layout, with `.json` ground truth:
    the face box is the frame less 8 px, the mouth box a fixed rectangle in its lower half."""
    rng, root = np.random.default_rng(seed), Path(root)
    k = 0
    for split, n in splits.items():
        names = []
        for _ in range(n):
            name = f"spk{k // 2:03d}/{k % 2 + 1:05d}"
            n_frames = 30 + 4 * k
            frames, audio = oracle_av(rng.integers(0, 8, n_frames), size)
            write_clip(root / "main" / f"{name}.mp4", frames, audio)
            gt = dict(speaker=name.split("/")[0], fps=25, sample_rate=16000, n_frames=n_frames, n_samples=len(audio),
                      face_boxes=[[8, 8, size - 8, size - 8]] * n_frames,
                      mouth_boxes=[[size * 0.3, size * 0.6, size * 0.7, size * 0.75]] * n_frames)
            (root / "main" / f"{name}.json").write_text(json.dumps(gt))
            names.append(name); k += 1
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory): return make_corpus(tmp_path_factory.mktemp("corpus"))


def fake_clip(n_frames=20, size=64, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (n_frames, size, size, 3), dtype=np.uint8)
    return SyncClip("fake.mp4", frames, np.zeros(n_frames * 640, np.int16), rng.normal(size=(13, 4 * n_frames)).astype(np.float32),
                    n_frames - 5)


# ---------------------------------------------------------------- config and splits
def test_judge_split_is_preferred(tmp_path, corpus):
    assert judge_split(JudgeConfig(corpus=str(corpus), split="val")) == "val"
    (tmp_path / "judge.txt").write_text("x/1\n"); (tmp_path / "val.txt").write_text("x/2\n")
    assert judge_split(JudgeConfig(corpus=str(tmp_path))) == "judge"


def test_config_refuses_forbidden_splits_and_bad_sizes():
    for split in ("train", "test"):
        with pytest.raises(ValueError, match="must not learn"): JudgeConfig(split=split)
    with pytest.raises(ValueError, match="too small"): JudgeConfig(img_size=48)
    with pytest.raises(ValueError, match="windows_per_clip"): JudgeConfig(windows_per_clip=1)
    with pytest.raises(ValueError, match="margin"): JudgeConfig(margin=0)
    with pytest.raises(ValueError, match="loss must be"): JudgeConfig(loss="triplet")
    cfg = JudgeConfig(img_size=96, width=0.25, embed_dim=64)
    assert cfg.model_config() == SyncNetV2Config(embed_dim=64, img_size=96, width=0.25)


def test_split_clips(tmp_path, corpus):
    assert [p.name for p in split_clips(corpus, "val")] == ["00001.mp4", "00002.mp4", "00001.mp4"]
    assert len(split_clips(corpus, "test", max_clips=2)) == 2
    with pytest.raises(FileNotFoundError, match="judge.txt"): split_clips(corpus, "judge")
    (tmp_path / "x.txt").write_text("# a comment\nspk9/00001 NF\n")
    with pytest.raises(FileNotFoundError, match="missing"): split_clips(tmp_path, "x")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="empty"): split_clips(tmp_path, "empty")


def test_split_overlapping_a_forbidden_one_is_refused(tmp_path, corpus):
    root = tmp_path / "c"
    (root).mkdir()
    (root / "main").symlink_to(corpus / "main")
    for s in ("train", "test"): (root / f"{s}.txt").write_text((corpus / f"{s}.txt").read_text())
    (root / "val.txt").write_text((corpus / "val.txt").read_text() + (corpus / "test.txt").read_text().split()[0] + "\n")
    with pytest.raises(ValueError, match="shares 1 clips with 'test'"):
        train_judge(JudgeConfig(corpus=str(root), steps=1), tmp_path / "run", progress=False)


# ---------------------------------------------------------------- batches and loss
def test_sample_batch_masks():
    clips = [fake_clip(20, seed=0), fake_clip(24, seed=1)]
    b = sample_batch(clips, np.random.default_rng(0), batch_clips=2, windows_per_clip=4, min_shift=2, augment=True)
    assert b["lips"].shape == (8, 3, 5, 64, 64) and b["lips"].dtype == torch.float32 and b["lips"].is_contiguous()
    assert b["audio"].shape == (8, 1, 13, 20)
    assert b["true"].sum() == 8 and not (b["true"] & b["false"]).any()
    same_clip = torch.zeros(8, 8, dtype=torch.bool); same_clip[:4, :4] = same_clip[4:, 4:] = True
    assert not (b["false"] & ~same_clip).any()         # false pairs never cross clips
    assert 0 <= b["lips"].min() and b["lips"].max() <= 255
    with pytest.raises(ValueError, match="no clip has"): sample_batch([fake_clip(8)], np.random.default_rng(0), windows_per_clip=4)


def test_sample_batch_is_seeded():
    clips = [fake_clip(20, seed=0), fake_clip(24, seed=1)]
    a, b = (sample_batch(clips, np.random.default_rng(3), 2, 4) for _ in range(2))
    assert torch.equal(a["lips"], b["lips"]) and torch.equal(a["false"], b["false"])


def test_contrastive_loss_values():
    d = torch.tensor([[0.2, 0.3, 2.0], [0.1, 0.4, 0.9]])
    true = torch.tensor([[True, False, False], [False, True, False]])
    false = ~true
    expected = 0.5 * ((0.2 ** 2 + 0.4 ** 2) / 2 + ((1 - 0.3) ** 2 + 0 + (1 - 0.1) ** 2 + (1 - 0.9) ** 2) / 4)
    assert contrastive_loss(d, true, false, 1.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least one true"): contrastive_loss(d, torch.zeros_like(true), false)


def test_multiway_loss_values():
    d = torch.tensor([[0.5, 2.0, 9.0], [1.0, 0.0, 3.0], [4.0, 1.0, 2.0]])
    true = torch.eye(3, dtype=torch.bool)
    false = torch.tensor([[False, True, False], [True, False, True], [True, True, False]])  # (0,2) is not a candidate
    logits = (-d).masked_fill(~(true | false), float("-inf"))
    rows = -torch.log_softmax(logits, 1).diag().mean()
    cols = -torch.log_softmax(logits, 0).diag().mean()
    assert multiway_loss(d, true, false).item() == pytest.approx(0.5 * (rows + cols).item())
    # by hand, row 0: its own distance 0.5 against the one candidate at 2.0
    assert -torch.log_softmax(logits, 1)[0, 0].item() == pytest.approx(np.log1p(np.exp(0.5 - 2.0)))
    with pytest.raises(ValueError, match="at least one off-sync candidate"): multiway_loss(d, true, torch.zeros_like(false))
    # a window with no candidate (here lip 0 / audio 0) is left out rather than counted as a free zero
    lone = false.clone(); lone[0] = lone[:, 0] = False
    lg = (-d).masked_fill(~(true | lone), float("-inf"))
    expected = 0.5 * (-torch.log_softmax(lg, 1).diag()[1:].mean() - torch.log_softmax(lg, 0).diag()[1:].mean())
    assert multiway_loss(d, true, lone).item() == pytest.approx(expected.item())
    # a collapsed judge (all distances equal) pays log(number of candidates)
    assert multiway_loss(torch.ones(4, 4), torch.eye(4, dtype=torch.bool), ~torch.eye(4, dtype=torch.bool)).item() == pytest.approx(np.log(4))


def test_distances_match_the_scoring_convention():
    v, a = torch.randn(4, 8), torch.randn(4, 8)
    d = pair_distances(v, a)
    assert torch.allclose(d, torch.stack([torch.nn.functional.pairwise_distance(v[i:i + 1].expand(4, -1), a) for i in range(4)]))
    dp, tp, fp = padded_pairs(v, a, torch.eye(4, dtype=torch.bool), ~torch.eye(4, dtype=torch.bool))
    assert dp.shape == (4, 5) and fp[:, 4].all() and not tp[:, 4].any()
    assert torch.allclose(dp[:, 4], torch.linalg.vector_norm(v + 1e-6, dim=1))


# ---------------------------------------------------------------- audio shifts
@pytest.mark.parametrize("k", [3, -5, 0])
def test_shift_audio_gives_that_offset(k):
    frames, audio = oracle_av(np.random.default_rng(7).integers(0, 8, 40))
    shifted = shift_audio(audio, k)
    assert len(shifted) == len(audio) and shifted.dtype == np.int16
    assert lse_scores_av(frames, shifted, OracleSync(), LSEConfig(img_size=64))["offset"] == k


def test_shift_longer_than_the_audio_is_silence():
    assert not shift_audio(np.ones(1000, np.int16), 5).any()


# ---------------------------------------------------------------- training, checkpoint, report
def test_train_judge_run_folder_and_round_trip(tmp_path, corpus):
    cfg = JudgeConfig(corpus=str(corpus), steps=4, batch_clips=2, windows_per_clip=4, log_every=2, eval_videos=2, eval_shift=2,
                      crop_faces=False)   # the oracle clips have no face
    with pytest.warns(UserWarning, match="no judge split"): res = train_judge(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert {"config.yaml", "latest.pth", "metrics.json", "metrics.jsonl", "report"} <= {p.name for p in run.iterdir()}
    assert all(np.isfinite(v) for v in res.values()) and res["step"] == 4 and res["clips"] == 3
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train"] == [2, 4]
    assert yaml.safe_load((run / "config.yaml").read_text())["judge"]["split"] == "val"
    ckpt = torch.load(run / "latest.pth", weights_only=True)
    assert {"state_dict", "optimizer", "global_step", "config", "version", "format"} <= set(ckpt)
    judge = load_judge(run / "latest.pth")
    assert judge.cfg == cfg.model_config() and not judge.training
    assert judge_lse_config(judge) == cfg.lse_config() and not judge_lse_config(judge).crop_faces
    assert all(torch.equal(judge.state_dict()[k], v) for k, v in ckpt["state_dict"].items())
    assert json.loads((run / "report" / "judge_report.json").read_text())["summary"]["n_videos"] == 2


@pytest.mark.parametrize("loss", ["multiway", "contrastive"])
def test_judge_loss_falls_on_learnable_data(tmp_path, corpus, loss):
    "The oracle clips are easy: a few dozen steps must lower the loss."
    cfg = JudgeConfig(corpus=str(corpus), steps=40, batch_clips=3, windows_per_clip=6, log_every=10, augment=False,
                      eval_split="", lr=1e-3, crop_faces=False, loss=loss)
    train_judge(cfg, tmp_path / "run", progress=False)
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"train"' in l]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_face_track_view_of_a_corpus_clip():
    path = split_clips(CORPUS, "judge")[0]
    crop, whole = (load_sync_clip(path, JudgeConfig(crop_faces=c).lse_config()) for c in (True, False))
    assert crop.frames.shape == whole.frames.shape and crop.frames.shape[1:] == (64, 64, 3)
    assert crop.n_windows == whole.n_windows and np.array_equal(crop.mfcc, whole.mfcc)
    frames, _ = read_video_frames(path)
    assert np.array_equal(crop.frames, face_crops(frames, get_detector("blazeface").detect(frames), 0.4, 64))
    # the face (a fifth of the 160-px frame's width) fills the crop: skin covers several times more of it
    skin = np.array(json.loads(path.with_suffix(".json").read_text())["identity"]["skin"])[::-1]   # RGB → BGR
    share = lambda f: np.mean(np.abs(f.astype(float) - skin).sum(-1) < 60)
    assert share(crop.frames) > 3 * share(whole.frames)


def test_face_track_view_of_a_faceless_clip_names_the_file(corpus):
    path = split_clips(corpus, "test")[0]
    with pytest.raises(ValueError, match=f"{path.name}.*no face"):
        load_sync_clip(path, JudgeConfig().lse_config())


def test_load_judge_takes_the_released_format(tmp_path):
    state = SyncNetV2(SyncNetV2Config(embed_dim=16, img_size=64, width=0.0625)).state_dict()
    with pytest.raises(ValueError, match="does not match"): load_judge(state)   # bare state dict → released architecture
    torch.save(SyncNetV2().state_dict(), tmp_path / "syncnet_v2.model")
    assert load_judge(tmp_path / "syncnet_v2.model").cfg == SyncNetV2Config()
    with pytest.raises(FileNotFoundError): load_judge(tmp_path / "nope.pth")


def test_judge_report_needs_two_videos(corpus):
    judge = SyncNetV2(SyncNetV2Config(embed_dim=16, img_size=64, width=0.0625)).eval()
    with pytest.raises(ValueError, match="at least 2"): judge_report(judge, split_clips(corpus, "test")[:1], progress=False)


def test_cli_train_judge(tmp_path, corpus, capsys):
    params = ["--params", str(ROOT / "params.yaml")]
    assert cli_train_judge([*params, "--set", "judge.split=test", "--quiet"]) == 1
    assert "must not learn" in capsys.readouterr().err
    args = [*params, "--run-dir", str(tmp_path / "r"), "--quiet", "--set", f"corpus.path={corpus}", "--set", "judge.steps=2",
            "--set", "judge.crop_faces=false",
            "--set", "judge.windows_per_clip=3", "--set", "judge.batch_clips=2", "--set", "judge.eval_split=''"]
    assert cli_train_judge(args) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
