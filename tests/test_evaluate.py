"""The paper's protocol: pairing rules, mouth mass, tables and the ordering sentence, files and errors, a tiny end-to-end run."""
import csv
import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from attnwav2lip.attention_maps import box_coverage, box_in_crop, mouth_mass
from attnwav2lip.evaluate import EvalConfig, check_finite, make_pairs, mux_audio, pair_videos, read_pairs, write_pairs
from attnwav2lip.report import (PAPER_TABLE1, PAPER_TABLE2, aggregate_runs, cli_evaluate, ordering_statement, paper_tables,
                                run_evaluation)
from attnwav2lip.lse import SyncNetV2, SyncNetV2Config
from attnwav2lip.models import AttnWav2Lip, ModelConfig
from test_judge import make_corpus

torch.set_num_threads(2)


def clips(lengths, speakers=None):
    return [dict(name=f"c{i}", speaker=(speakers or [f"s{i}" for i in range(len(lengths))])[i],
                 video_seconds=l, audio_seconds=l) for i, l in enumerate(lengths)]


# ---------------------------------------------------------------- pairing
def test_pairing_rules():
    cs = clips([2.0, 2.5, 3.0, 3.5, 4.0, 2.2, 3.1])
    pairs = pair_videos(cs, seed=0)
    by_name = {c["name"]: c for c in cs}
    assert len(pairs) == 6                                    # the shortest video has no shorter audio
    assert "c0" not in [p["video"] for p in pairs]
    for p in pairs:
        assert p["audio"] != p["video"]
        assert by_name[p["audio"]]["audio_seconds"] < by_name[p["video"]]["video_seconds"]
    assert [p["index"] for p in pairs] == list(range(6))
    assert pair_videos(cs, seed=0) == pairs                   # seeded
    assert any(pair_videos(cs, seed=s) != pairs for s in range(1, 6))


def test_pairing_options():
    cs = clips([2.0, 2.5, 3.0, 3.5], speakers=["a", "a", "b", "b"])
    for p in pair_videos(cs, different_speaker=True):
        assert p["audio_speaker"] != p["video_speaker"]
    assert [p["video"] for p in pair_videos(cs, different_speaker=True)] == ["c2", "c3"]
    sub = pair_videos(clips([2.0 + i / 10 for i in range(12)]), seed=1, max_videos=4)
    assert len(sub) == 4 and [p["index"] for p in sub] == [0, 1, 2, 3]
    assert pair_videos(clips([2.0])) == []


def test_pairs_file_round_trip_and_errors(tmp_path):
    pairs = pair_videos(clips([2.0, 2.5, 3.0]), seed=0)
    write_pairs(pairs, tmp_path / "p" / "pairs.csv")
    assert read_pairs(tmp_path / "p" / "pairs.csv") == pairs
    assert not list((tmp_path / "p").glob(".*"))              # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="pairing list"): read_pairs(tmp_path / "none.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a pairing list"): read_pairs(tmp_path / "bad.csv")


def test_make_pairs_on_a_corpus(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"test": 4})
    pairs = make_pairs(EvalConfig(corpus=str(corpus)), tmp_path / "pairs.csv")
    assert len(pairs) == 3 and (tmp_path / "pairs.csv").is_file()
    lengths = {p["video"]: p["video_seconds"] for p in pairs}
    assert all(p["audio_seconds"] < lengths[p["video"]] for p in pairs)
    with pytest.raises(FileNotFoundError): make_pairs(EvalConfig(corpus=str(corpus), split="val"), tmp_path / "x.csv")


# ---------------------------------------------------------------- mouth mass
def test_mouth_mass_on_hand_made_maps():
    cover = box_coverage((16, 32, 48, 48), (8, 8), 64)        # cells: rows 4–5, columns 2–5 exactly
    assert cover.sum() == 8 and set(np.unique(cover)) == {0.0, 1.0}
    inside = cover.copy()
    mass, area = mouth_mass(np.stack([inside, np.ones((8, 8)), np.where(cover > 0, 0.0, 1.0)]), np.stack([cover] * 3))
    assert mass == pytest.approx([1.0, 8 / 64, 0.0])
    assert area == pytest.approx([8 / 64] * 3)


def test_fractional_coverage():
    cover = box_coverage((4, 4, 12, 12), (4, 4), 32)          # one cell's area, straddling four 8×8 cells
    assert cover.sum() == pytest.approx(1.0)
    assert cover[0, 0] == pytest.approx(0.25) and cover[1, 1] == pytest.approx(0.25)
    assert box_coverage((-10, -10, 100, 100), (2, 2), 32).sum() == pytest.approx(4.0)   # clipped to the crop
    with pytest.raises(ValueError, match="differ"): mouth_mass(np.ones((1, 2, 2)), np.ones((1, 3, 3)))


def test_box_in_crop():
    assert box_in_crop((20, 30, 40, 50), (10, 10, 110, 60), 50) == pytest.approx((5, 20, 15, 40))


# ---------------------------------------------------------------- tables and the sentence
def fabricated(d_offset=-1.0, c_offset=1.0, seeds=(0,), noise=0.0):
    rng = np.random.default_rng(0)
    return [dict(variant=v, dataset="synthetic", seed=s, metrics=dict(lse_d=d + d_offset + noise * rng.normal(),
            lse_c=c + c_offset + noise * rng.normal(), lse_d_std=0.001, lse_c_std=0.001))
            for v, (d, c) in PAPER_TABLE2.items() for s in seeds]


def test_aggregate_over_seeds_and_videos():
    one = aggregate_runs(fabricated())
    assert all(r["std_over"] == "videos" and r["lse_d_std"] == 0.001 for r in one)
    two = aggregate_runs(fabricated(seeds=(0, 1), noise=0.1))
    r = next(r for r in two if r["variant"] == "Wav2Lip")
    runs = [x["metrics"]["lse_d"] for x in fabricated(seeds=(0, 1), noise=0.1) if x["variant"] == "Wav2Lip"]
    assert r["n_seeds"] == 2 and r["std_over"] == "seeds"
    assert r["lse_d"] == pytest.approx(np.mean(runs)) and r["lse_d_std"] == pytest.approx(np.std(runs, ddof=1))


def test_ordering_sentence_agrees_and_disagrees():
    s = ordering_statement(aggregate_runs(fabricated()))
    assert "the paper reports AttnWav2Lip best on LRS2 (AttnWav2Lip < SattnWav2Lip < CattnWav2Lip < Wav2Lip)" in s
    assert s.count("6 of 6 pairwise orderings agree") == 2 and "LSE-D: yes, LSE-C: yes" in s
    reversed_d = fabricated(d_offset=0.0)
    for r in reversed_d: r["metrics"]["lse_d"] = 20 - r["metrics"]["lse_d"]
    s = ordering_statement(aggregate_runs(reversed_d))
    assert "0 of 6 pairwise orderings agree" in s and "LSE-D: no" in s and "best is Wav2Lip" in s


def test_ordering_sentence_flags_noise_and_missing_variants():
    rows = fabricated()
    for r in rows: r["metrics"]["lse_d_std"] = 5.0
    assert "within noise" in ordering_statement(aggregate_runs(rows))
    only = [r for r in fabricated() if r["variant"] == "AttnWav2Lip"]
    assert "fewer than two variants" in ordering_statement(aggregate_runs(only))


def test_paper_tables_files(tmp_path):
    refs = dict(rows=[dict(variant="Real videos", dataset="synthetic", seed=0, metrics=dict(lse_d=0.5, lse_c=0.4))])
    lrs2 = dict(variant="Wav2Lip", dataset="LRS2", seed=0, metrics=dict(lse_d=7.0, lse_c=6.0))
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    res = paper_tables(fabricated(seeds=(0, 1), noise=0.05) + [tmp_path / "refs.json", lrs2], tmp_path / "t")
    names = {p.name for p in (tmp_path / "t").iterdir()}
    assert names == {"table1.md", "table1.csv", "table2.md", "table2.csv", "tables.md", "lse_table.png", "metrics.json"}
    t2 = list(csv.DictReader((tmp_path / "t" / "table2.csv").read_text().splitlines()))
    assert [r["method"] for r in t2] == list(PAPER_TABLE2) + ["Real videos"]
    assert float(t2[0]["paper_lrs2_lse_d"]) == PAPER_TABLE2["Wav2Lip"][0]
    t1 = {r["method"]: r for r in res["table1"]}
    assert t1["Wav2Lip"]["ours_LRS2_lse_d"] == 7.0 and t1["AttnWav2Lip"]["ours_LRS2_lse_d"] is None
    assert t1["LipGAN"]["paper_LRW_lse_c"] == PAPER_TABLE1["LipGAN"]["LRW"][1]
    md = (tmp_path / "t" / "tables.md").read_text()
    assert "seeds (n=2 seeds)" in md and res["sentence"] in md and "7.000 / 6.000" in md
    assert all(math.isfinite(v) for v in json.loads((tmp_path / "t" / "metrics.json").read_text()).values())
    with pytest.raises(FileNotFoundError): paper_tables([tmp_path / "missing.json"], tmp_path / "t2")


def test_finite_guard():
    with pytest.raises(ValueError, match="lse_d"): check_finite(dict(lse_d=float("nan"), ok=1.0))
    with pytest.raises(ValueError, match="x"): check_finite(dict(x=None))


def test_mux_audio_errors_leave_nothing(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="cannot mux"): mux_audio(tmp_path / "bad.mp4", np.zeros(16000, np.int16), tmp_path / "o" / "x.mp4")
    assert list((tmp_path / "o").iterdir()) == []


# ---------------------------------------------------------------- end to end
def test_run_evaluation_end_to_end(tmp_path):
    corpus = make_corpus(tmp_path / "c", {"test": 4})
    torch.manual_seed(0)
    jcfg = SyncNetV2Config(embed_dim=16, img_size=64, width=0.0625)
    torch.save(dict(state_dict=SyncNetV2(jcfg).state_dict(), config=dict(model=asdict(jcfg))), tmp_path / "judge.pth")
    cks = []
    for att, seed in (("none", 0), ("spatial", 0), ("spatial", 1)):
        m = ModelConfig(img_size=48, width=0.25, attention=att)
        cks.append(tmp_path / f"{att}{seed}.pth")
        torch.save(dict(state_dict=AttnWav2Lip(m).state_dict(), config=dict(model=m.to_dict(), generator=dict(seed=seed))), cks[-1])
    cfg = EvalConfig(corpus=str(corpus), max_videos=2, quality_videos=1, attention_clips=1, attention_frames=2,
                     show_faces=1, shift_frames=3)
    metrics = run_evaluation(cfg, tmp_path / "judge.pth", cks, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.values())
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert {p.name for p in (out / "generators").iterdir()} == {"none_s0", "spatial_s0", "spatial_s1"}
    assert len(list((out / "generators" / "spatial_s1" / "paired").glob("*.mp4"))) == 2
    assert metrics["references_shifted_offset"] == metrics["references_shifted_offset"]   # present and finite
    rows = list(csv.DictReader((out / "attention" / "mouth_attention.csv").read_text().splitlines()))
    assert {r["variant"] for r in rows} == {"SattnWav2Lip"} and len(rows) == 2 * 14
    assert all(0 <= float(r["mouth_mass"]) <= 1 for r in rows)
    assert (out / "attention" / "attention_maps.png").stat().st_size > 1000
    t2 = {r["method"]: r for r in csv.DictReader((out / "tables" / "table2.csv").read_text().splitlines())}
    assert t2["SattnWav2Lip"]["n_seeds"] == "2" and t2["SattnWav2Lip"]["std_over"] == "seeds"
    assert t2["CattnWav2Lip"]["lse_d"] == ""


def test_cli_evaluate_errors(tmp_path, capsys):
    assert cli_evaluate(["--judge", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "none.pth" in capsys.readouterr().err
