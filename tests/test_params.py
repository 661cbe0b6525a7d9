"""The params schema: the repository's own params files load, every section maps to its dataclass, derived fields
are refused, overrides apply, and the stage builders give each run its variant and seed."""
from pathlib import Path

import pytest
import yaml

from attnwav2lip.data import DataConfig
from attnwav2lip.models import ModelConfig
from attnwav2lip.params import SECTIONS, Params, load_params
from attnwav2lip.train import ExpertTrainConfig, GeneratorTrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["params.yaml", "params_paper.yaml", "pipeline/params_smoke.yaml"])
def test_repository_params_files_load(name):
    p = load_params(ROOT / name).check()
    assert set(p.to_dict()) == set(SECTIONS)
    assert p.model.img_size == p.data.img_size == p.expert_model.img_size == p.preprocess.img_size


def test_paper_params_are_the_papers():
    p = load_params(ROOT / "params_paper.yaml").check()
    assert (p.preprocess.img_size, p.preprocess.detector, p.model.width, p.expert_model.width) == (96, "s3fd", 1.0, 1.0)
    g = p.generator
    assert (g.batch_size, g.lr, g.alpha, g.beta, g.amp, g.alpha_schedule) == (80, 1e-4, 0.03, 0.07, "off", "plateau")
    assert (g.ckpt_every, g.keep_checkpoints, p.expert.ckpt_every) == (3000, 3, 10000)
    assert p.eval.protocol == "official"
    assert p.corpus.name == "LRS2" and p.eval.dataset == "LRS2" and p.judge.corpus == p.corpus.path


def test_every_params_file_key_is_a_dataclass_field():
    "No key of params.yaml is silently ignored."
    for name in ("params.yaml", "params_paper.yaml"):
        raw = yaml.safe_load((ROOT / name).read_text())
        p = load_params(ROOT / name)
        for section, values in raw.items():
            built = getattr(p, section)
            for k, v in (values or {}).items():
                got = getattr(built, k)
                assert got == v or (isinstance(got, tuple) and list(got) == v), (name, section, k, got, v)


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['trainer'\]"):
        Params({"trainer": {}})
    with pytest.raises(ValueError, match=r"model.img_size ← preprocess.img_size"):
        Params({"model": {"img_size": 96}}).model
    with pytest.raises(ValueError, match=r"generator.seed ← experiment.seeds"):
        Params({"generator": {"seed": 3}}).generator
    with pytest.raises(ValueError, match=r"phase1.seed ← experiment.seeds"):
        Params({"phase1": {"seed": 3}}).phase1
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['alpah'\] in params section 'generator'"):
        Params({"generator": {"alpah": 0.1}}).generator
    with pytest.raises(ValueError, match="alpha \\+ beta < 1"):
        Params({"generator": {"alpha": 0.5, "beta": 0.6}}).generator
    with pytest.raises(ValueError, match="experiment.variants"):
        Params({"experiment": {"variants": ["attn"]}}).experiment
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("expert: [1, 2]\n")
    with pytest.raises(ValueError, match="section 'expert' must be a mapping"):
        load_params(tmp_path / "bad.yaml")


def test_overrides_and_run_builders(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"preprocess": {"img_size": 48}, "expert": {"steps": 10, "seed": 4}}))
    p = load_params(f, ["expert.steps=3", "model.width=0.25", "experiment.seeds=[0, 1, 2]", "generator.warm_start=null"])
    assert (p.expert.steps, p.model.width, p.experiment.seeds, p.generator.warm_start) == (3, 0.25, (0, 1, 2), None)
    with pytest.raises(ValueError, match="section.key=value"):
        load_params(f, ["steps=3"])
    m, d, e = p.expert_run("crops")
    assert isinstance(m, ModelConfig) and isinstance(d, DataConfig) and isinstance(e, ExpertTrainConfig)
    assert (m.img_size, d.seed, e.seed, e.data_root) == (48, 4, 4, "crops")
    m, d, g = p.generator_run("channel", 2, "crops", "expert.pth")
    assert isinstance(g, GeneratorTrainConfig)
    assert (m.attention, m.width, d.seed, g.seed, g.expert_checkpoint) == ("channel", 0.25, 2, 2, "expert.pth")
    assert p.experiment.runs()[:2] == ["none-s0", "none-s1"]
    with pytest.raises(ValueError, match="unknown variant"):
        p.generator_run("attn", 0, "crops", "expert.pth")
