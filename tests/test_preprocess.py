"""Corpus preprocessing: bad inputs, atomic clips, resume, filelists, report, command line."""
import json
import os

import cv2
import numpy as np
import pytest
import soundfile as sf
from skimage import data as skdata

import attnwav2lip.preprocess as pre
from attnwav2lip.preprocess import (ClipDropped, PreprocessConfig, cli_preprocess, find_videos, preprocess_clip,
                                    preprocess_corpus, probe_video, read_video, write_video)

HEAD = cv2.resize(np.ascontiguousarray(skdata.astronaut()[30:230, 130:330, ::-1]), (120, 120), interpolation=cv2.INTER_AREA)
HEAD_BOX = (29, 31, 85, 87)  # where BlazeFace puts the face inside HEAD
CFG = PreprocessConfig(img_size=48)


def head_clip(n=30, hide=()):
    """A 160×160 clip of a drifting face (hidden in `hide`) and its true boxes."""
    frames, boxes = [], []
    for i in range(n):
        x, y = 20 + i % 7, 20 + i % 5
        f = np.full((160, 160, 3), 120, np.uint8)
        if i not in hide:
            f[y:y + 120, x:x + 120] = HEAD
        frames.append(f)
        boxes.append(None if i in hide else (x + HEAD_BOX[0], y + HEAD_BOX[1], x + HEAD_BOX[2], y + HEAD_BOX[3]))
    return np.stack(frames), boxes


def tone(seconds):
    t = np.arange(int(16000 * seconds)) / 16000
    return 0.3 * np.sin(2 * np.pi * 200 * t)


def make_video(path, n=30, fps=25, audio=True, hide=(), boxes_json=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    frames, boxes = head_clip(n, hide)
    write_video(path, frames, fps=fps, audio=tone(n / fps) if audio else None)
    if boxes_json:
        path.with_suffix(".json").write_text(json.dumps({"face_boxes": boxes}))
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    src = tmp_path_factory.mktemp("corpus")
    make_video(src / "main/spkA/00001.mp4", boxes_json=True)
    make_video(src / "main/spkA/00002.mp4", fps=30, n=36)
    make_video(src / "main/spkB/00001.mp4", hide=set(range(25)))  # only 5 frames with a face
    make_video(src / "main/spkB/00002.mp4", audio=False)
    (src / "main/spkB/00003.mp4").write_bytes(b"")
    (src / "main/spkB/00004.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(500))
    (src / "train.txt").write_text("spkA/00001\nspkA/00002\nspkB/00001\n")
    (src / "test.txt").write_text("spkA/00001 NF\nspkB/00002 MV\n")
    return src


def no_partials(root):
    return [p for p in root.rglob("*.partial")]


# --- probing and reading ---------------------------------------------------------------------------------------

def test_probe_bad_inputs(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="video not found"):
        probe_video(tmp_path / "nope.mp4")
    with pytest.raises(ValueError, match="00003.mp4: empty file"):
        probe_video(corpus / "main/spkB/00003.mp4")
    with pytest.raises(ValueError, match="00004.mp4: unreadable video"):
        probe_video(corpus / "main/spkB/00004.mp4")
    with pytest.raises(ValueError, match="not a file"):
        probe_video(corpus / "main")
    info = probe_video(corpus / "main/spkB/00002.mp4")
    assert info["has_audio"] is False and info["fps"] == 25 and (info["width"], info["height"]) == (160, 160)


def test_read_video_resamples_to_25fps(corpus):
    v = corpus / "main/spkA/00002.mp4"
    assert probe_video(v)["fps"] == 30
    assert read_video(v).shape == (36, 160, 160, 3)
    assert read_video(v, fps=25).shape[0] == 30
    with pytest.raises(ValueError, match="cannot decode"):
        read_video(corpus / "main/spkB/00004.mp4")


# --- one clip ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,cfg,match", [
    ("spkB/00001", CFG, r"5 of 30 frames have a face \(< min_frames 16\)"),
    ("spkB/00002", CFG, "no audio stream"),
    ("spkB/00003", CFG, "empty file"),
    ("spkB/00004", CFG, "unreadable video"),
    ("spkA/00002", PreprocessConfig(img_size=48, resample_fps=False), "30 fps, expected 25 .resampling disabled."),
    ("spkA/00001", PreprocessConfig(img_size=48, detector="boxes"), None),  # no sidecar for a copy: see below
])
def test_bad_clips_are_dropped_without_leftovers(tmp_path, corpus, name, cfg, match):
    video = corpus / "main" / f"{name}.mp4"
    if match is None:  # 'boxes' detector on a video without a <clip>.json
        video = make_video(tmp_path / "src/x/y.mp4")
        match = "no provided face boxes"
    out = tmp_path / "out"
    with pytest.raises(ClipDropped, match=match):
        preprocess_clip(video, out / name, cfg)
    assert not (out / name).exists() and not no_partials(tmp_path)


def test_clip_output_layout(tmp_path, corpus):
    meta = preprocess_clip(corpus / "main/spkA/00001.mp4", tmp_path / "spkA/00001", CFG)
    clip = tmp_path / "spkA/00001"
    jpgs = sorted(int(p.stem) for p in clip.glob("*.jpg"))
    assert jpgs == list(range(30)) and meta["written"] == 30
    assert cv2.imread(str(clip / "7.jpg")).shape == (48, 48, 3)
    info = sf.info(str(clip / "audio.wav"))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert abs(info.duration - 1.2) < 0.05
    done = json.loads((clip / "done.json").read_text())
    assert done["gt"]["recall"] == 1.0 and done["gt"]["mean_iou"] > 0.8
    assert done["config"]["img_size"] == 48


def test_short_gaps_are_interpolated_long_gaps_skipped(tmp_path):
    video = make_video(tmp_path / "src/s/c.mp4", n=40, hide={5, 6} | set(range(20, 30)))
    meta = preprocess_clip(video, tmp_path / "out/s/c", PreprocessConfig(img_size=48, max_gap=3))
    jpgs = {int(p.stem) for p in (tmp_path / "out/s/c").glob("*.jpg")}
    assert {5, 6} <= jpgs and not jpgs & set(range(20, 30))
    assert meta["interpolated_frames"] == [[5, 7]] and meta["missing_frames"] == [[20, 30]]


def test_provided_boxes_detector(tmp_path, corpus):
    meta = preprocess_clip(corpus / "main/spkA/00001.mp4", tmp_path / "c", PreprocessConfig(img_size=48, detector="boxes"))
    assert meta["detected"] == 30 and meta["gt"]["mean_iou"] == 1.0


def test_interrupted_clip_leaves_nothing(tmp_path, corpus, monkeypatch):
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(pre, "extract_audio", boom)
    with pytest.raises(KeyboardInterrupt):
        preprocess_clip(corpus / "main/spkA/00001.mp4", tmp_path / "spkA/00001", CFG)
    assert not (tmp_path / "spkA/00001").exists() and not no_partials(tmp_path)


# --- the corpus -------------------------------------------------------------------------------------------------

def test_corpus_report_filelists_and_resume(tmp_path, corpus, capsys):
    out = tmp_path / "pre"
    s = preprocess_corpus(corpus, out, CFG, progress=False)
    assert (s["clips_found"], s["clips_kept"], s["clips_dropped"]) == (6, 2, 4)
    reasons = {d["clip"]: d["reason"] for d in s["dropped"]}
    assert "no audio stream" in reasons["spkB/00002"] and "empty file" in reasons["spkB/00003"]
    assert "unreadable video" in reasons["spkB/00004"] and "min_frames" in reasons["spkB/00001"]
    assert json.loads((out / "spkA/00002/done.json").read_text())["resampled"] is True
    assert s["ground_truth"]["clips"] == 1 and s["ground_truth"]["recall"] == 1.0
    assert (out / "train.txt").read_text() == "spkA/00001\nspkA/00002\n"
    assert (out / "test.txt").read_text() == "spkA/00001 NF\n"
    assert json.loads((out / "preprocess_report.json").read_text())["clips_kept"] == 2
    assert "recall@IoU0.5 1.0000" in capsys.readouterr().out
    assert not no_partials(out)

    mtime = (out / "spkA/00001/0.jpg").stat().st_mtime_ns
    again = preprocess_corpus(corpus, out, CFG, progress=False, verbose=False)
    assert (again["clips_new"], again["clips_already_done"], again["clips_dropped"]) == (0, 2, 4)
    assert (out / "spkA/00001/0.jpg").stat().st_mtime_ns == mtime
    assert again["frames_written"] == s["frames_written"]
    with pytest.raises(ValueError, match="preprocessed with other settings"):
        preprocess_corpus(corpus, out, PreprocessConfig(img_size=96), progress=False)


def test_resume_redoes_unfinished_clips(tmp_path, corpus):
    out = tmp_path / "pre"
    (out / "spkA/00001").mkdir(parents=True)
    (out / "spkA/00001/0.jpg").write_bytes(b"half")  # no done.json: a clip from a crashed or foreign run
    (out / "spkA/.00002.partial").mkdir(parents=True)  # a crashed run's temp folder
    s = preprocess_corpus(corpus, out, CFG, filelist=corpus / "train.txt", progress=False, verbose=False)
    assert s["clips_new"] == 2 and (out / "spkA/00001/done.json").is_file()
    assert cv2.imread(str(out / "spkA/00001/0.jpg")).shape == (48, 48, 3)
    assert not no_partials(out)


def test_filelist_with_missing_video(tmp_path, corpus):
    fl = tmp_path / "list.txt"
    fl.write_text("spkA/00001\nspkZ/99999\n")
    s = preprocess_corpus(corpus, tmp_path / "pre", CFG, filelist=fl, progress=False, verbose=False)
    assert s["clips_kept"] == 1 and "video not found" in s["dropped"][0]["reason"]


def test_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="corpus folder not found"):
        preprocess_corpus(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="filelist not found"):
        find_videos(tmp_path, tmp_path / "nope.txt")
    (tmp_path / "a/spk").mkdir(parents=True)
    (tmp_path / "b/spk").mkdir(parents=True)
    (tmp_path / "a/spk/c.mp4").write_bytes(b"x")
    (tmp_path / "b/spk/c.mp4").write_bytes(b"x")
    with pytest.raises(ValueError, match="same clip id"):
        find_videos(tmp_path)
    with pytest.raises(ValueError, match="needs weights"):
        PreprocessConfig(detector="s3fd").make_detector()


def test_find_videos_layouts(tmp_path):
    for p in ["lrs2/main/5535/00001.mp4", "lrs3/trainval/id0/50001.mp4", "lrw/ABOUT/train/ABOUT_00001.mp4",
              "lrs2/main/5535/.x.partial/0.mp4"]:
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"x")
    assert [c for c, _ in find_videos(tmp_path / "lrs2")] == ["5535/00001"]
    assert [c for c, _ in find_videos(tmp_path / "lrs3")] == ["id0/50001"]
    assert [c for c, _ in find_videos(tmp_path / "lrw")] == ["train/ABOUT_00001"]


def test_cli(tmp_path, corpus):
    out = tmp_path / "pre"
    assert cli_preprocess([str(corpus), str(out), "--img-size", "48", "--quiet", "--limit", "1", "--pads", "0", "5", "0", "0"]) == 0
    assert json.loads((out / "preprocess_config.json").read_text())["pads"] == [0, 5, 0, 0]
    assert cli_preprocess([str(corpus), str(tmp_path / "none"), "--quiet", "--filelist", str(corpus / "test.txt"),
                           "--no-resample", "--min-frames", "1000"]) == 1
    with pytest.raises(SystemExit):
        cli_preprocess([str(corpus), str(out), "--detector", "haar"])
