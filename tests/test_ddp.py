"""DistributedDataParallel, the scale-out path: two gloo processes, each given one half of a global batch, train as one
process on the whole batch — the same loss step after step, with replicas that stay identical — for the generator
(with the GAN and the frozen expert) and for the expert. (Weights are not compared with the one-process run's: Adam
divides by the root of the squared gradient, so float-rounding differences in near-zero gradients move single
weights by up to a step size without changing the loss.)

BatchNorm normalises with the statistics of the batch a process sees (there is no SyncBatchNorm on the CPU, and the
official scripts' DataParallel behaves the same way), so the two halves are made equal: each process then sees the
statistics of the whole batch, and what is compared is the data-parallel part — gradients averaged over processes
before each Adam step."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from attnwav2lip.data import DataConfig, write_toy_corpus
from attnwav2lip.models import ModelConfig
from attnwav2lip.runs import save_checkpoint, setup_runtime
from attnwav2lip.train import ExpertTrainConfig, ExpertTrainer, GeneratorTrainConfig, GeneratorTrainer

S, T, STEPS = 48, 5, 3


def _no_guard(**losses): pass


def _trainer(kind, root, batch, rt):
    data = DataConfig(img_size=S)
    if kind == "expert":
        return ExpertTrainer(ModelConfig(img_size=S, width=0.0625), data,
                             ExpertTrainConfig(batch_size=batch, steps=STEPS, data_root=str(root)), rt, root)
    cfg = GeneratorTrainConfig(batch_size=batch, steps=STEPS, lr=1e-3, alpha=0.03, beta=0.07, alpha_schedule="fixed",
                               data_root=str(root), expert_checkpoint=str(root / "expert" / "latest.pth"))
    return GeneratorTrainer(ModelConfig(img_size=S, width=0.0625, attention="cbam"), data, cfg, rt, root)


def _half(kind):
    "One half of the global batch (fixed random tensors); the global batch is two copies of it."
    g = torch.Generator().manual_seed(0)
    if kind == "expert":
        return (torch.rand(2, 3 * T, S // 2, S, generator=g), torch.randn(2, 1, 80, 16, generator=g), torch.tensor([[1.0], [0.0]]))
    return (torch.rand(2, 6, T, S, S, generator=g), torch.randn(2, T, 1, 80, 16, generator=g),
            torch.randn(2, 1, 80, 16, generator=g), torch.rand(2, 3, T, S, S, generator=g))


def _losses(kind, root, batch, tensors, rt):
    torch.manual_seed(0)   # the same initial weights in every process and in the single-process run
    tr = _trainer(kind, root, batch, rt)
    losses = [float(tr.train_step(tensors, _no_guard)["loss"]) for _ in range(STEPS)]
    return losses, {k: v.detach().clone() for k, v in tr.model.state_dict().items() if v.is_floating_point()}


def _rank(rank, kind, root, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    rt = setup_runtime("cpu", "off", threads=1)
    try:
        losses, weights = _losses(kind, Path(root), 4, _half(kind), rt)
        torch.save(dict(losses=losses, weights=weights), Path(root) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("ddp")
    write_toy_corpus(r, {"spk0/00001": 30, "spk1/00001": 30}, size=S)
    (r / "train.txt").write_text("spk0/00001\n"); (r / "val.txt").write_text("spk1/00001\n")
    torch.manual_seed(1)
    e = _trainer("expert", r, 4, setup_runtime("cpu"))
    save_checkpoint({"state_dict": e.model.state_dict(), "global_step": 0,
                     "config": {"model": ModelConfig(img_size=S, width=0.0625).to_dict()}}, r / "expert")
    return r


@pytest.mark.parametrize("kind", ["generator", "expert"])
def test_two_processes_train_as_one_on_the_doubled_batch(root, kind):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    mp.spawn(_rank, args=(kind, str(root), port), nprocs=2, join=True)
    ranks = [torch.load(root / f"rank{r}.pt") for r in range(2)]
    one_losses, _ = _losses(kind, root, 4, tuple(torch.cat([t, t]) for t in _half(kind)), setup_runtime("cpu"))
    for r in ranks: assert r["losses"] == pytest.approx(one_losses, rel=1e-4, abs=1e-6)
    assert one_losses[0] != one_losses[-1]   # the steps did train
    for k, w in ranks[0]["weights"].items():   # the replicas stay identical: every process applied the same averaged gradient
        assert torch.equal(w, ranks[1]["weights"][k]), k
