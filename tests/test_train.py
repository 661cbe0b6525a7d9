"""Mechanism tests of the trainers: configs, sample order, exact resume, NaN stop, α schedule, DDP on CPU, CLI."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from attnwav2lip.data import DataConfig, write_toy_corpus
from attnwav2lip.models import ModelConfig, SyncNetColor
from attnwav2lip.cli import cli_train_expert, cli_train_generator
from attnwav2lip.runs import RunLog, load_checkpoint, save_checkpoint
from attnwav2lip.train import (ExpertTrainConfig, GeneratorTrainConfig, NonFiniteLoss, StepBatches, load_expert,
                               train_expert, train_generator)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(img_size=48, width=0.0625)
DATA = DataConfig(img_size=48)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    clips = {f"spk{i}/{j:05d}": 30 for i in range(3) for j in range(2)}
    write_toy_corpus(root, clips, size=48)
    names = list(clips)
    (root / "train.txt").write_text("\n".join(names[:4]) + "\n")
    (root / "val.txt").write_text("\n".join(names[4:]) + "\n")
    return root


def expert_cfg(corpus, **kw):
    return ExpertTrainConfig(**{**dict(batch_size=8, steps=4, log_every=1, eval_every=2, eval_batches=1, ckpt_every=2,
                                       data_root=str(corpus)), **kw})


def generator_cfg(corpus, expert, **kw):
    return GeneratorTrainConfig(**{**dict(batch_size=4, steps=4, log_every=1, eval_every=2, eval_batches=1, ckpt_every=2,
                                          data_root=str(corpus), expert_checkpoint=str(expert), grid_samples=2), **kw})


@pytest.fixture(scope="module")
def expert(corpus, tmp_path_factory):
    run = tmp_path_factory.mktemp("expert")
    train_expert(MODEL, DATA, expert_cfg(corpus, steps=2), run)
    return run / "latest.pth"


def train_losses(run, split="train"):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in RunLog(run).read(split)]


def same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()


# ---------------------------------------------------------------- configs and params

@pytest.mark.parametrize("bad", [dict(alpha_schedule="sometimes"), dict(beta=0.99, alpha=0.03), dict(amp="fp8"),
                                 dict(batch_size=0), dict(lr=0), dict(tail_lr=0), dict(steps=10, tail_steps=11)])
def test_bad_generator_config(bad):
    with pytest.raises(ValueError):
        GeneratorTrainConfig(**bad)


# ---------------------------------------------------------------- sample order

def test_step_batches_cover_each_epoch_once_and_shard_without_overlap():
    full = list(StepBatches(10, 5, seed=3, start=0, stop=4))
    for epoch in (0, 1):
        assert sorted(i for b in full for e, i in b if e == epoch) == list(range(10))
    shards = [list(StepBatches(10, 6, 3, 0, 4, rank=r, world=3)) for r in range(3)]
    for step in range(4):
        keys = [k for s in shards for k in s[step]]
        assert len(set(keys)) == 6 and all(len(s[step]) == 2 for s in shards)
    assert list(StepBatches(10, 5, 3, start=2, stop=4)) == full[2:]
    with pytest.raises(ValueError, match="not divisible"):
        StepBatches(10, 5, 0, world=2)


# ---------------------------------------------------------------- runs, resume, checkpoints

def test_expert_run_folder_and_exact_resume(corpus, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    r1 = train_expert(MODEL, DATA, expert_cfg(corpus), straight)
    train_expert(MODEL, DATA, expert_cfg(corpus, steps=2), split)
    r2 = train_expert(MODEL, DATA, expert_cfg(corpus), split)           # resumes from latest.pth at step 2
    assert train_losses(straight) == train_losses(split) and len(train_losses(split)) == 4
    assert train_losses(straight, "val") == train_losses(split, "val")
    assert {k: v for k, v in r1.items() if k != "wall_s"} == {k: v for k, v in r2.items() if k != "wall_s"}
    a, b = load_checkpoint(straight / "latest.pth"), load_checkpoint(split / "latest.pth")
    assert same_weights(a["state_dict"], b["state_dict"])
    assert a["optimizer"]["state"][0]["step"] == b["optimizer"]["state"][0]["step"]
    files = {p.name for p in straight.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "metrics_train.tsv", "metrics_val.tsv", "metrics.json", "latest.pth",
            "checkpoint_step000000002.pth", "checkpoint_step000000004.pth"} <= files
    assert {"global_step", "global_epoch", "state_dict", "optimizer", "config", "rng", "version"} <= set(a)
    assert a["config"]["model"] == MODEL.to_dict() and a["global_step"] == 4
    cfg = yaml.safe_load((straight / "config.yaml").read_text())
    assert cfg["expert"]["steps"] == 4 and cfg["runtime"]["device"] == "cpu"
    header, *rows = (straight / "metrics_val.tsv").read_text().splitlines()
    assert header.split("\t")[:3] == ["step", "loss", "acc"] and len(rows) == 2
    # a finished run is not trained again; one with other settings is refused
    assert train_expert(MODEL, DATA, expert_cfg(corpus), straight)["step"] == 4
    with pytest.raises(ValueError, match="expert.lr"):
        train_expert(MODEL, DATA, expert_cfg(corpus, lr=1e-3), straight)


def test_generator_exact_resume_with_gan_and_checkpointed_alpha_switch(corpus, expert, tmp_path):
    # threshold 10: the first evaluation (step 2) switches α on; the resumed half must keep it on
    cfg = dict(sync_threshold=10.0, alpha_schedule="auto")
    model = ModelConfig(img_size=48, width=0.0625, attention="cbam")
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_generator(model, DATA, generator_cfg(corpus, expert, **cfg), straight)
    train_generator(model, DATA, generator_cfg(corpus, expert, steps=2, **cfg), split)
    mid = load_checkpoint(split / "latest.pth")
    assert (mid["schedule"]["alpha_on"], mid["schedule"]["alpha"], mid["schedule"]["switch_step"]) == (True, 0.03, 2)
    train_generator(model, DATA, generator_cfg(corpus, expert, **cfg), split)
    rows = train_losses(straight)
    assert rows == train_losses(split)
    assert [r["alpha"] for r in rows] == [0.0, 0.0, 0.03, 0.03] and "sync" in rows[2] and "disc_real" in rows[0]
    a, b = load_checkpoint(straight / "latest.pth"), load_checkpoint(split / "latest.pth")
    assert same_weights(a["state_dict"], b["state_dict"]) and same_weights(a["disc_state_dict"], b["disc_state_dict"])
    assert sorted(p.name for p in (straight / "samples").iterdir()) == ["step000000002.png", "step000000004.png"]
    val = train_losses(straight, "val")[-1]
    assert {"l1", "sync_loss", "sync_acc", "p_gen", "p_real", "p_ref", "p_shift", "disc_real", "gen_loss"} <= set(val)


def test_generator_no_gan_fixed_alpha_keeps_expert_frozen_in_eval_mode(corpus, expert, tmp_path, monkeypatch):
    import attnwav2lip.train as train
    seen = {}
    orig = train.GeneratorTrainer.train_step

    def spy(self, batch, guard):
        before = {k: v.clone() for k, v in self.expert.state_dict().items()}
        out = orig(self, batch, guard)
        seen.setdefault("eval", []).append(not self.expert.training)
        seen["unchanged"] = same_weights(before, self.expert.state_dict())
        seen["disc"] = self.disc
        return out
    monkeypatch.setattr(train.GeneratorTrainer, "train_step", spy)
    r = train_generator(MODEL, DATA, generator_cfg(corpus, expert, beta=0.0, alpha_schedule="fixed", steps=2), tmp_path / "g")
    assert all(seen["eval"]) and seen["unchanged"] and seen["disc"] is None
    assert r["alpha"] == 0.03 and "disc_real" not in r
    assert "disc_state_dict" not in load_checkpoint(tmp_path / "g" / "latest.pth")


def test_warm_start_and_fine_tune_from_a_checkpoint(corpus, expert, tmp_path):
    base = tmp_path / "wav2lip"
    train_generator(MODEL, DATA, generator_cfg(corpus, expert, steps=1, beta=0.0), base)
    cbam = ModelConfig(img_size=48, width=0.0625, attention="cbam")
    # warm start: every Wav2Lip weight goes into the attention variant; the report is logged as an event
    train_generator(cbam, DATA, generator_cfg(corpus, expert, steps=1, warm_start=str(base / "latest.pth")), tmp_path / "w")
    event = RunLog(tmp_path / "w").read("event")[0]["event"]
    assert event.startswith(f"warm start from {base / 'latest.pth'}: loaded") and "new (attention) keys" in event
    # the paper's fine-tune: a new run from the last checkpoint, α fixed from its first step, the step count restarting
    r = train_generator(MODEL, DATA, generator_cfg(corpus, expert, steps=1, beta=0.0, alpha_schedule="fixed",
                                                     init_checkpoint=str(base / "latest.pth")), tmp_path / "f")
    assert r["step"] == 1 and RunLog(tmp_path / "f").read("train")[0]["alpha"] == 0.03


def test_lr_tail_switches_once_and_resumes_exactly(corpus, expert, tmp_path):
    import shutil
    cfg = generator_cfg(corpus, expert, beta=0.0, lr=1e-3, tail_steps=2, tail_lr=1e-5, ckpt_every=1)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_generator(MODEL, DATA, cfg, straight)
    lrs = [load_checkpoint(straight / f"checkpoint_step{s:09d}.pth")["optimizer"]["param_groups"][0]["lr"] for s in range(1, 5)]
    assert lrs == [1e-3, 1e-3, 1e-5, 1e-5]
    shutil.copytree(straight, split)   # a run stopped inside the tail, after step 3, resumes to the same weights
    shutil.copy(straight / "checkpoint_step000000003.pth", split / "latest.pth")
    (split / "checkpoint_step000000004.pth").unlink()
    train_generator(MODEL, DATA, cfg, split)
    assert same_weights(load_checkpoint(straight / "latest.pth")["state_dict"], load_checkpoint(split / "latest.pth")["state_dict"])


def test_shared_phase1_trains_once_per_seed_and_every_variant_starts_from_it(corpus, expert, tmp_path):
    from attnwav2lip.train import train_runs
    params = tmp_path / "params.yaml"
    params.write_text(textwrap.dedent("""
        experiment: {variants: [none, cbam], seeds: [0, 1], workers: 1, threads: 1, shared_phase1: true}
        preprocess: {img_size: 48}
        model: {width: 0.0625}
        phase1: {steps: 2, batch_size: 2, eval_every: 2, eval_batches: 1, alpha: 0.0, beta: 0.0, alpha_schedule: fixed}
        generator: {steps: 1, batch_size: 2, eval_every: 1, eval_batches: 1, beta: 0.0}
    """))
    res = train_runs(params, corpus, expert, tmp_path / "runs")
    assert sorted(res) == ["cbam-s0", "cbam-s1", "none-s0", "none-s1", "phase1-s0", "phase1-s1"]
    assert res["phase1-s0"]["step"] == 2 and res["cbam-s1"]["step"] == 1
    phase1 = load_checkpoint(tmp_path / "runs" / "phase1-s1" / "run" / "latest.pth")
    assert phase1["config"]["model"]["attention"] == "none" and phase1["config"]["generator"]["alpha"] == 0.0
    for name in ("none-s1", "cbam-s1"):
        event = RunLog(tmp_path / "runs" / name / "run").read("event")[0]["event"]
        assert event.startswith(f"warm start from {tmp_path / 'runs' / 'phase1-s1' / 'run' / 'latest.pth'}: loaded"), event
    params.write_text(params.read_text().replace("beta: 0.0}\n", "beta: 0.0, warm_start: wav2lip.pth}\n"))
    with pytest.raises(ValueError, match="generator.warm_start and experiment.shared_phase1"):
        train_runs(params, corpus, expert, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_generator_inputs_are_checked(corpus, expert, tmp_path):
    with pytest.raises(ValueError, match="expert_checkpoint"):
        train_generator(MODEL, DATA, generator_cfg(corpus, expert, expert_checkpoint=None), tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        train_generator(MODEL, DATA, generator_cfg(corpus, tmp_path / "nothing.pth"), tmp_path / "b")
    with pytest.raises(ValueError, match="img_size"):
        train_generator(MODEL, DataConfig(img_size=96), generator_cfg(corpus, expert), tmp_path / "c")
    with pytest.raises(FileNotFoundError, match="data_root"):
        train_generator(MODEL, DATA, generator_cfg(tmp_path / "nowhere", expert), tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="no train.txt filelist"):
        train_expert(MODEL, DATA, expert_cfg(corpus, filelists=str(tmp_path)), tmp_path / "e")


def test_load_expert_is_frozen_and_sized_from_its_checkpoint(expert):
    net = load_expert(expert)
    assert isinstance(net, SyncNetColor) and not net.training and net.cfg == MODEL
    assert not any(p.requires_grad for p in net.parameters())


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    import attnwav2lip.train as train
    run = tmp_path / "run"
    train_expert(MODEL, DATA, expert_cfg(corpus, steps=2), run)
    good = (run / "latest.pth").read_bytes()

    class Poisoned(SyncNetColor):
        def forward(self, audio, face):
            a, v = super().forward(audio, face)
            return a * float("nan"), v
    monkeypatch.setattr(train, "SyncNetColor", Poisoned)
    with pytest.raises(NonFiniteLoss, match=r"step 3 .*last good checkpoint is .*latest.pth"):
        train_expert(MODEL, DATA, expert_cfg(corpus), run)
    assert (run / "latest.pth").read_bytes() == good
    assert sorted(p.name for p in run.glob("checkpoint_step*")) == ["checkpoint_step000000002.pth"]
    assert RunLog(run).read("event")[-1]["event"] == "non-finite loss"


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    sd = SyncNetColor(MODEL).state_dict()
    sd[next(iter(sd))].fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite"):
        save_checkpoint({"state_dict": sd, "global_step": 1}, tmp_path)
    assert not list(tmp_path.iterdir())


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")


def test_stuck_at_chance_is_reported(corpus, tmp_path):
    with pytest.warns(UserWarning, match="stuck at 0.69"):
        r = train_expert(MODEL, DATA, expert_cfg(corpus, steps=2, stuck_after=0, stuck_margin=10.0), tmp_path / "s")
    assert r["stuck"] == 1


# ---------------------------------------------------------------- command line

def test_cli_trains_expert_then_generator_from_params(corpus, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "preprocess": {"img_size": 48}, "model": {"width": 0.0625}, "expert_model": {"width": 0.0625},
        "expert": {"batch_size": 4, "steps": 1, "eval_batches": 1},
        "generator": {"batch_size": 2, "steps": 1, "eval_batches": 1, "beta": 0.0}}))
    crops = ["--data-root", str(corpus)]
    assert cli_train_expert(["--params", str(params), "--run-dir", str(tmp_path / "e"), *crops]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["step"] == 1
    assert cli_train_generator(["--params", str(params), "--run-dir", str(tmp_path / "g"), *crops,
                                "--expert", str(tmp_path / "e" / "latest.pth"), "--variant", "spatial", "--seed", "3"]) == 0
    cfg = load_checkpoint(tmp_path / "g" / "latest.pth")["config"]
    assert (cfg["model"]["attention"], cfg["generator"]["seed"], cfg["data"]["seed"]) == ("spatial", 3, 3)
    assert cli_train_expert(["--params", str(params), "--set", "expert.nope=1", *crops]) == 1
    assert "unknown key(s) ['nope']" in capsys.readouterr().err


# ---------------------------------------------------------------- DistributedDataParallel, 2 CPU processes

DDP_SCRIPT = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from attnwav2lip.data import DataConfig
from attnwav2lip.models import ModelConfig
from attnwav2lip.runs import seed_everything, setup_runtime
from attnwav2lip.train import *
corpus, run, stage = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
model, data = ModelConfig(img_size=48, width=0.0625, attention="cbam"), DataConfig(img_size=48)
rt = setup_runtime("cpu")
seed_everything(0)
common = dict(steps=2, log_every=1, eval_every=2, eval_batches=1, ckpt_every=2, data_root=corpus)
if stage == "expert":
    cfg = ExpertTrainConfig(batch_size=8, **common)
    trainer = ExpertTrainer(model, data, cfg, rt, run)
else:
    cfg = GeneratorTrainConfig(batch_size=4, expert_checkpoint=sys.argv[4], alpha_schedule="fixed", **common)
    trainer = GeneratorTrainer(model, data, cfg, rt, run)
fit(trainer, cfg, {"model": model.to_dict(), stage: cfg.__dict__}, run, rt)
torch.save(trainer.state_dict()["state_dict"], run.parent / f"{stage}_rank{rt.rank}.pt")
torch.distributed.destroy_process_group()
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("stage", ["expert", "generator"])
def test_ddp_two_cpu_processes(corpus, expert, tmp_path, stage):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(corpus), str(tmp_path / "run"), stage, str(expert)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    w0, w1 = (torch.load(tmp_path / f"{stage}_rank{r}.pt") for r in (0, 1))
    assert same_weights(w0, w1)                                          # the replicas stayed identical
    ckpt = load_checkpoint(tmp_path / "run" / "latest.pth")
    assert ckpt["global_step"] == 2 and same_weights(ckpt["state_dict"], w0)
    rows = RunLog(tmp_path / "run").read("train")
    assert [r["step"] for r in rows] == [1, 2]                            # rank 0 alone writes the metrics
    assert all(torch.isfinite(torch.tensor(v)) for r in rows for k, v in r.items() if isinstance(v, float))
