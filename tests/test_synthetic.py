"""Mechanism tests of the synthetic corpus generator: determinism, splits, file format, ground truth, bad inputs, atomic writes."""
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from attnwav2lip import synthetic as syn
from attnwav2lip.runs import atomic_write
from attnwav2lip.synthetic import (JUDGE_SPLIT, SPLITS, VISEME_PARAMS, VISEMES, VOICE_ACCENTS, VOICE_VARIANTS, ESpeak, FaceRenderer,
                                   SynthConfig, cli_synth, generate_corpus, random_identity, read_clip, speak,
                                   split_speakers, synthesize_clip, random_speaker, viseme_track)

SMALL = SynthConfig(size=64, min_seconds=1.0, max_seconds=2.4)   # quick clips for mechanism tests


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    summary = generate_corpus(root, n_speakers=5, clips_per_speaker=2, seed=3, cfg=SMALL, val_fraction=0.2,
                              test_fraction=0.2, progress=False)
    return root, summary


def _clips(root):
    return sorted(p.relative_to(root / "main").with_suffix("").as_posix() for p in (root / "main").glob("*/*.mp4"))


# -- determinism --------------------------------------------------------------------------------------------------
def test_same_seed_and_size_give_the_same_bytes_and_frames(corpus, tmp_path):
    root, _ = corpus
    again = tmp_path / "again"
    generate_corpus(again, n_speakers=5, clips_per_speaker=2, seed=3, cfg=SMALL, val_fraction=0.2, test_fraction=0.2,
                    progress=False)
    names = _clips(root)
    assert names == _clips(again) and len(names) == 10
    for name in names:
        a, b = root / "main" / name, again / "main" / name
        assert a.with_suffix(".json").read_bytes() == b.with_suffix(".json").read_bytes(), name
        assert a.with_suffix(".mp4").read_bytes() == b.with_suffix(".mp4").read_bytes(), name
    fa, aa, _ = read_clip(root / "main" / f"{names[0]}.mp4")
    fb, ab, _ = read_clip(again / "main" / f"{names[0]}.mp4")
    np.testing.assert_array_equal(fa, fb)
    np.testing.assert_array_equal(aa, ab)
    for s in SPLITS: assert (root / f"{s}.txt").read_bytes() == (again / f"{s}.txt").read_bytes()
    assert (root / "summary.json").read_bytes() == (again / "summary.json").read_bytes()


def test_other_seed_or_size_changes_the_clip():
    spk = random_speaker("spk000", np.random.default_rng([0, 0]))
    a = synthesize_clip(spk, np.random.default_rng([0, 0, 1]), SMALL)
    b = synthesize_clip(spk, np.random.default_rng([0, 0, 2]), SMALL)
    assert a.utterance.text != b.utterance.text or not np.array_equal(a.frames, b.frames)
    big = synthesize_clip(spk, np.random.default_rng([0, 0, 1]), SynthConfig(size=96, min_seconds=1.0, max_seconds=2.4))
    assert big.frames.shape[1:] == (96, 96, 3) and big.utterance.text == a.utterance.text
    np.testing.assert_allclose(big.face_boxes / 96, a.face_boxes / 64, atol=0.02)   # same face, scaled


def test_speech_does_not_depend_on_what_was_said_before():
    first = speak("Bob found five yellow boats.", "en+f3").wav
    speak("Something else entirely, said at another rate.", "en-us+m2", rate=190)
    np.testing.assert_array_equal(speak("Bob found five yellow boats.", "en+f3").wav, first)


# -- splits -------------------------------------------------------------------------------------------------------
def test_splits_are_disjoint_by_speaker_and_identity(corpus):
    root, summary = corpus
    lists = {s: (root / f"{s}.txt").read_text().split() for s in SPLITS}
    speakers = {s: {n.split("/")[0] for n in lists[s]} for s in SPLITS}
    assert all(speakers[s] for s in SPLITS)
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"] or speakers["val"] & speakers["test"])
    identities = {s: {json.dumps(json.loads((root / "main" / f"{n}.json").read_text())["identity"], sort_keys=True)
                      for n in lists[s]} for s in SPLITS}
    assert not (identities["test"] & (identities["train"] | identities["val"]))
    assert sorted(sum(lists.values(), [])) == _clips(root)
    for s in SPLITS:
        assert summary["splits"][s]["clips"] == len(lists[s]) and summary["splits"][s]["speakers"] == len(speakers[s])
        for n in lists[s]: assert json.loads((root / "main" / f"{n}.json").read_text())["split"] == s


def test_judge_speakers_are_extra_and_leave_the_rest_unchanged(corpus, tmp_path):
    root, summary = corpus
    judged = tmp_path / "judged"
    with_judge = generate_corpus(judged, n_speakers=5, clips_per_speaker=2, seed=3, cfg=SMALL, val_fraction=0.2,
                                 test_fraction=0.2, progress=False, judge_speakers=2)
    judge = (judged / "judge.txt").read_text().split()
    assert judge == ["jdg000/00001", "jdg000/00002", "jdg001/00001", "jdg001/00002"]
    # the judge clips are additions: every other clip and filelist keeps its bytes
    assert _clips(judged) == sorted(_clips(root) + judge)
    for name in _clips(root):
        for ext in (".mp4", ".json"):
            assert (judged / "main" / f"{name}{ext}").read_bytes() == (root / "main" / f"{name}{ext}").read_bytes(), name
    for s in SPLITS: assert (judged / f"{s}.txt").read_bytes() == (root / f"{s}.txt").read_bytes()
    # disjoint from the other splits by name, face and voice
    others = [n for s in SPLITS for n in (root / f"{s}.txt").read_text().split()]
    gt = lambda n: json.loads((judged / "main" / f"{n}.json").read_text())
    assert not {n.split("/")[0] for n in judge} & {n.split("/")[0] for n in others}
    key = lambda g: json.dumps([g["identity"], g["voice"]], sort_keys=True)
    assert not {key(gt(n)) for n in judge} & {key(gt(n)) for n in others}
    assert {gt(n)["split"] for n in judge} == {JUDGE_SPLIT} and gt(judge[0])["generator"] == gt(others[0])["generator"]
    # summary and README gain the judge row; the other rows are as before
    assert with_judge["judge_speakers"] == 2 and with_judge["splits"][JUDGE_SPLIT] == {
        "speakers": 2, "clips": 4, "frames": sum(gt(n)["n_frames"] for n in judge),
        "seconds": round(sum(gt(n)["duration"] for n in judge), 2)}
    assert {s: with_judge["splits"][s] for s in SPLITS} == summary["splits"]
    assert with_judge["total"]["speakers"] == 7 and with_judge["total"]["clips"] == 14
    readme = (judged / "README.md").read_text()
    assert "--judge-speakers 2" in readme and "| judge | 2 | 4 |" in readme and "evaluation judge" in readme


def test_default_corpus_has_no_judge_split(corpus, tmp_path):
    root, summary = corpus
    assert not (root / "judge.txt").exists() and JUDGE_SPLIT not in summary["splits"] and "judge_speakers" not in summary
    assert "judge" not in (root / "README.md").read_text()
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    generate_corpus(copy, n_speakers=5, clips_per_speaker=1, seed=3, cfg=SMALL, val_fraction=0.2, test_fraction=0.2,
                    progress=False, judge_speakers=1)
    assert (copy / "judge.txt").read_text() == "jdg000/00001\n"
    generate_corpus(copy, n_speakers=5, clips_per_speaker=2, seed=3, cfg=SMALL, val_fraction=0.2, test_fraction=0.2,
                    progress=False)                                   # back to no judge: its stale filelist goes
    assert not (copy / "judge.txt").exists()
    for f in ["summary.json"] + [f"{s}.txt" for s in SPLITS]:
        assert (copy / f).read_bytes() == (root / f).read_bytes(), f
    assert (copy / "README.md").read_text().replace(str(copy), str(root)) == (root / "README.md").read_text()


def test_split_speakers_counts():
    split = split_speakers(48, 0.1, 0.2, seed=0)
    assert [split.count(s) for s in SPLITS] == [33, 5, 10]
    assert split == split_speakers(48, 0.1, 0.2, seed=0) and split != split_speakers(48, 0.1, 0.2, seed=1)
    assert split_speakers(2, 0.0, 0.2, seed=0).count("test") == 1
    with pytest.raises(ValueError, match="cannot fill"): split_speakers(2, 0.1, 0.2, seed=0)
    with pytest.raises(ValueError, match="fraction"): split_speakers(10, 0.5, 0.6, seed=0)


# -- file format --------------------------------------------------------------------------------------------------
def test_mp4_is_h264_25fps_with_aac_audio_and_frames_match_audio(corpus):
    root, _ = corpus
    mp4 = root / "main" / f"{_clips(root)[0]}.mp4"
    info = subprocess.run([syn._ffmpeg(), "-hide_banner", "-i", str(mp4)], capture_output=True, text=True).stderr
    video = next(l for l in info.splitlines() if "Video:" in l)
    audio = next(l for l in info.splitlines() if "Audio:" in l)
    assert "h264" in video and "yuv420p" in video and "64x64" in video and re.search(r"\b25 fps", video), video
    assert "aac" in audio and "16000 Hz" in audio and "mono" in audio, audio
    frames, wav, gt = read_clip(mp4)
    assert len(frames) == gt["n_frames"] == len(gt["face_boxes"])
    assert gt["n_samples"] == gt["n_frames"] * 640                       # audio padded to whole frames
    assert abs(len(wav) / 16000 - len(frames) / 25) < 1 / 25              # decoded audio lasts as long as the video
    assert 1.0 <= gt["duration"] <= 2.4 + 1 / 25


def test_ground_truth_schema(corpus):
    root, _ = corpus
    gt = json.loads((root / "main" / f"{_clips(root)[0]}.json").read_text())
    n, size = gt["n_frames"], gt["generator"]["size"]
    for key in ("sentence", "voice", "identity", "phonemes", "visemes", "dominant_visemes", "face_boxes", "mouth_boxes",
                "head_motion", "blink", "placement", "generator", "split", "speaker", "clip"):
        assert key in gt, key
    assert set(gt["voice"]) == {"name", "rate", "pitch", "pitch_range"}
    assert gt["viseme_params"] == list(VISEME_PARAMS)
    for key, width in (("visemes", 5), ("face_boxes", 4), ("mouth_boxes", 4), ("head_motion", 4)):
        assert np.asarray(gt[key]).shape == (n, width), key
    assert len(gt["dominant_visemes"]) == len(gt["blink"]) == n and set(gt["dominant_visemes"]) <= set(VISEMES)
    v = np.asarray(gt["visemes"])
    assert v.min() >= 0 and v.max() <= 1
    face, mouth = np.asarray(gt["face_boxes"]), np.asarray(gt["mouth_boxes"])
    assert (face >= 0).all() and (face <= size).all()
    assert (face[:, 0] < mouth[:, 0]).all() and (mouth[:, 2] < face[:, 2]).all()
    assert (face[:, 1] < mouth[:, 1]).all() and (mouth[:, 3] <= face[:, 3] + 1).all()
    ph = gt["phonemes"]
    assert ph[0][1] == 0 and abs(ph[-1][2] - gt["duration"]) < 1e-3
    assert all(abs(a[2] - b[1]) < 1e-6 and a[1] < a[2] for a, b in zip(ph, ph[1:]))   # contiguous timeline


def test_mouth_follows_the_phonemes():
    # /a p a/: the bilabial closes the mouth between two open vowels, silence keeps it closed
    timeline = [("_", 0, 0.2), ("ˈɑː", 0.2, 0.4), ("p", 0.4, 0.46), ("ɑː", 0.46, 0.66), ("_", 0.66, 1.0)]
    params, dominant = viseme_track(timeline, 25)
    t = (np.arange(25) + 0.5) / 25
    opening = params[:, VISEME_PARAMS.index("open")]
    assert opening[np.abs(t - 0.3).argmin()] > 0.8 and opening[np.abs(t - 0.56).argmin()] > 0.8
    assert opening[np.abs(t - 0.43).argmin()] < 0.15 and dominant[np.abs(t - 0.43).argmin()] == "closed"
    assert opening[0] < 0.05 and opening[-1] < 0.05


def test_every_listed_voice_is_accepted():
    engine = ESpeak.get()
    for accent in VOICE_ACCENTS:
        for variant in VOICE_VARIANTS:
            wav, events = engine.synthesize("Bob.", accent + variant)
            assert len(wav) and events, accent + variant


def test_blazeface_finds_the_drawn_faces():
    faces = pytest.importorskip("attnwav2lip.faces")
    detector = faces.get_detector("blazeface")
    rng = np.random.default_rng(11)
    frames, truth = [], []
    for _ in range(20):
        r = FaceRenderer(random_identity(rng), 160, 2, (0.5 + rng.uniform(-0.05, 0.05), 0.48, rng.uniform(0.9, 1.1)))
        img, box, _ = r.frame(VISEMES["open"][0], (0.0, 0.0, rng.uniform(-4, 4), 1.0))
        frames.append(img); truth.append(tuple(box))
    assert faces.detection_recall(detector.detect(frames), truth)["recall"] >= 0.95


# -- bad inputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [(dict(size=0), "size"), (dict(size=161), "size"), (dict(fps=0), "fps"),
                                     (dict(sample_rate=16001), "multiple"), (dict(min_seconds=3, max_seconds=2), "min_seconds"),
                                     (dict(crf=99), "crf"), (dict(supersample=0), "supersample")])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg): SynthConfig(**kw)


def test_bad_corpus_arguments(tmp_path):
    for kw, msg in ((dict(n_speakers=1), "n_speakers"), (dict(clips_per_speaker=0), "clips_per_speaker"),
                    (dict(seed=-1), "seed"), (dict(n_speakers=2.5), "n_speakers"),
                    (dict(judge_speakers=-1), "judge_speakers"), (dict(judge_speakers=1.5), "judge_speakers")):
        with pytest.raises(ValueError, match=msg): generate_corpus(tmp_path / "x", **{"progress": False, **kw})
    assert not (tmp_path / "x").exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="cannot write the corpus to .*a_file"):
        generate_corpus(blocker / "corpus", n_speakers=3, clips_per_speaker=1, progress=False)


def test_cli_reports_bad_arguments(tmp_path, capsys):
    with pytest.raises(SystemExit) as e: cli_synth(["--out", str(tmp_path / "c"), "--size", "0", "--quiet"])
    assert e.value.code == 2 and "size must be" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e: cli_synth(["--out", str(tmp_path / "c"), "--speakers", "1", "--quiet"])
    assert e.value.code == 2 and "n_speakers" in capsys.readouterr().err


def test_cli_generates_a_corpus(tmp_path):
    out = tmp_path / "c"
    cli_synth(["--out", str(out), "--speakers", "2", "--clips-per-speaker", "1", "--size", "64", "--min-seconds", "1",
               "--max-seconds", "1.5", "--val-fraction", "0", "--quiet"])
    assert len(_clips(out)) == 2
    assert "attnwav2lip synth --out" in (out / "README.md").read_text()
    assert json.loads((out / "summary.json").read_text())["total"]["clips"] == 2
    assert not (out / "judge.txt").exists()
    cli_synth(["--out", str(out), "--speakers", "2", "--clips-per-speaker", "1", "--size", "64", "--min-seconds", "1",
               "--max-seconds", "1.5", "--val-fraction", "0", "--judge-speakers", "1", "--quiet"])
    assert (out / "judge.txt").read_text() == "jdg000/00001\n" and len(_clips(out)) == 3
    assert "--judge-speakers 1" in (out / "README.md").read_text()


def test_unreadable_inputs(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="missing.mp4"): read_clip(tmp_path / "missing.mp4")
    with pytest.raises(ValueError, match="rejected the voice"): speak("hello", "en-gb+f2")
    import espeakng_loader
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: str(tmp_path / "libespeak-ng.so"))
    with pytest.raises(RuntimeError, match="espeak-ng library is missing"): ESpeak()


# -- atomic writes and resuming -----------------------------------------------------------------------------------
def test_failed_encode_leaves_no_partial_clip(tmp_path, monkeypatch):
    spk = random_speaker("spk000", np.random.default_rng(0))
    clip = synthesize_clip(spk, np.random.default_rng(1), SMALL)
    monkeypatch.setattr(syn, "_ffmpeg", lambda: "false")      # an "ffmpeg" that fails
    with pytest.raises(RuntimeError, match="ffmpeg failed writing"):
        syn.write_clip(clip, tmp_path, "spk000/00001", "train", SMALL, seed=0)
    assert [p.name for p in (tmp_path / "main" / "spk000").iterdir()] == []


def test_interrupted_json_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "clip.json"
    def crash(p):
        p.write_text('{"half": ')
        raise KeyboardInterrupt
    assert syn.atomic_write is atomic_write   # the corpus writer's every file goes through it
    with pytest.raises(KeyboardInterrupt): syn.atomic_write(target, crash)
    assert list(tmp_path.iterdir()) == []


def test_rerun_resumes_and_only_redoes_missing_clips(corpus, tmp_path):
    root, _ = corpus
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    name = _clips(copy)[3]
    (copy / "main" / f"{name}.json").unlink()                       # as if the run died between mp4 and json
    (copy / "main" / name).parent.joinpath(".00009.mp4.x.partial").write_bytes(b"junk")
    before = {p: p.stat().st_mtime_ns for p in (copy / "main").glob("*/*.mp4")}
    generate_corpus(copy, n_speakers=5, clips_per_speaker=2, seed=3, cfg=SMALL, val_fraction=0.2, test_fraction=0.2,
                    progress=False)
    changed = [p for p, t in before.items() if p.stat().st_mtime_ns != t]
    assert [p.relative_to(copy / "main").with_suffix("").as_posix() for p in changed] == [name]
    assert (copy / "main" / f"{name}.json").read_bytes() == (root / "main" / f"{name}.json").read_bytes()
    assert not list(copy.glob("main/*/.*.partial"))
