"""Training with several processes (``distributed.processes``): torchrun, DDP with gloo on CPU.

The slow test starts a real torchrun job: 2 gloo ranks must train the weights of a one-process
reference that splits every global batch as the ranks do (a killed rank, on another machine, and the
resume: tests/test_multinode.py). The others check that ``processes: 1`` never starts torchrun or a
process group, and the params errors.

Run as a script under torchrun (``torchrun --nproc_per_node 2 tests/test_distributed.py OUT``), this
file is the ranks' side of the first test.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from noisy_student import distributed
from noisy_student.config import ModelParams, OptimParams, ParamsError, StudentNoiseParams, parse_params
from noisy_student.data import ImageSet
from noisy_student.models import create_classifier
from noisy_student.noise import BatchAugment
from noisy_student.seeds import seed_everything
from noisy_student.training.batches import TrainData, _Stream, batches_per_epoch, one_hot
from noisy_student.training.loop import _optimization, train_classifier
from noisy_student.training.recipe import RunPlan, TrainingInputs
from noisy_student.training.task import NoisyStudentTask
from tests.conftest import ROOT, micro_params, run

RANKS = 2
SEED = 3
NOISE = StudentNoiseParams(randaugment_num_ops=1, randaugment_magnitude=5, dropout=0.1, stochastic_depth=0.1)
# 64 labeled images / 16 = 4 updates per epoch: 20 updates; 32 pseudo-labeled images per update
OPTIM = OptimParams(epochs=5, batch_size=16, lr=0.05, warmup_epochs=0, eval_every=5, checkpoint_steps=1000)
RATIO = 2


def _data() -> TrainData:
    g = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 60, (32, 1, 16, 16), generator=g, dtype=torch.uint8)
    light = torch.randint(190, 256, (32, 1, 16, 16), generator=g, dtype=torch.uint8)
    labels = torch.cat([torch.zeros(32), torch.ones(32)]).long().numpy()
    soft = torch.tensor([[0.8, 0.2]] * 16 + [[0.3, 0.7]] * 16)
    return TrainData(torch.cat([dark, light]), one_hot(labels, 2), torch.cat([dark[:16], light[:16]]), soft)


def _model() -> torch.nn.Module:
    seed_everything(0)
    model, _ = create_classifier(ModelParams(arch="test_resnet"), 2, 1, (0.5,), (0.3,), NOISE.dropout, 0.1)
    return model


def _ddp_rank(out: Path) -> None:
    """One rank of the 2-rank job: train with DDP; rank 0 saves the weights."""
    torch.set_num_threads(1)
    with distributed.process_group(torch.device("cpu")) as world:
        assert world.size == RANKS
        model, _ = train_classifier(
            _model(), _data(), OPTIM, NOISE, unlabeled_ratio=RATIO, device=torch.device("cpu"), seed=SEED
        )
        if world.main:
            torch.save(model.state_dict(), out)


def _reference(ranks: int) -> dict[str, torch.Tensor]:
    """One process doing what ``ranks`` DDP ranks do: the same global indices, rank r's contiguous slice
    augmented and forwarded with rank r's generator (seed + r), the per-slice losses averaged (DDP averages
    the gradients), and the batch-norm statistics rank 0's (DDP broadcasts rank 0's before every step)."""
    model, data = _model(), _data()
    model.to(memory_format=torch.channels_last)
    steps = batches_per_epoch(len(data.labeled_images), OPTIM.batch_size)
    optimizer, scheduler = _optimization(model, OPTIM, steps)
    task = NoisyStudentTask(model)
    gen = torch.Generator().manual_seed(SEED)
    labeled, unlabeled = _Stream(len(data.labeled_images), gen), _Stream(len(data.unlabeled_images), gen)
    augment = BatchAugment(NOISE)
    rngs = []
    for rank in range(ranks):
        torch.manual_seed(SEED + rank)
        rngs.append(torch.get_rng_state())

    def inputs(images: torch.Tensor) -> torch.Tensor:
        return augment(images).float().div_(255).contiguous(memory_format=torch.channels_last)

    model.train()
    for update in range(1, OPTIM.epochs * steps + 1):
        li, ui = labeled.take(OPTIM.batch_size), unlabeled.take(OPTIM.batch_size * RATIO)
        kl, ku = len(li) // ranks, len(ui) // ranks
        before = {k: b.clone() for k, b in model.named_buffers()}
        optimizer.zero_grad(set_to_none=True)
        for rank in range(ranks):
            torch.set_rng_state(rngs[rank])
            for k, b in model.named_buffers():
                b.copy_(before[k])
            mine_l, mine_u = li[rank * kl : (rank + 1) * kl], ui[rank * ku : (rank + 1) * ku]
            lab = (inputs(data.labeled_images[mine_l]), data.labeled_targets[mine_l])
            unl = (inputs(data.unlabeled_images[mine_u]), data.unlabeled_targets[mine_u])
            (task(lab, unl)["loss"] / ranks).backward()
            rngs[rank] = torch.get_rng_state()
            if rank == 0:
                after_rank0 = {k: b.clone() for k, b in model.named_buffers()}
        for k, b in model.named_buffers():
            b.copy_(after_rank0[k])
        optimizer.step()
        scheduler.step_update(update)
    return model.state_dict()


@pytest.mark.slow
def test_two_gloo_ranks_train_the_weights_of_the_split_batch_reference(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    cmd = distributed.torchrun_command(RANKS, [str(Path(__file__)), str(out)], None)
    run(cmd, ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    ddp = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    reference = _reference(RANKS)
    assert ddp.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-5, msg=key)
    # and the split matters: one process on the whole batch is another training
    one = _reference(1)
    assert not torch.allclose(one["net.fc.weight"], ddp["net.fc.weight"], atol=1e-5)


# --- one process: no torchrun, no process group ---


def _params(**distributed_params: object) -> dict:
    p = micro_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    p["distributed"].update(distributed_params)
    return p


def _forbid_distributed(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the single-process path must not start torchrun, a process group or DDP")

    for name in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "relaunch", refuse)
    monkeypatch.setattr(torch.distributed, "init_process_group", refuse)
    monkeypatch.setattr(torch.nn.parallel.DistributedDataParallel, "__init__", refuse)


def test_one_process_starts_no_torchrun_and_no_process_group(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, one_thread: None
) -> None:
    from stages._processes import start_processes
    from stages._train import exclusive_run, other_rank_trains

    _forbid_distributed(monkeypatch)
    monkeypatch.setenv("NOISY_STUDENT_ROOT", str(tmp_path))
    params = parse_params(_params())
    assert params.distributed.processes == 1
    start_processes(params)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (32, 8, 8), dtype=np.uint8), rng.integers(0, 2, 32)
    imageset = ImageSet(images, labels, np.arange(32), np.array(["x"] * 32))
    plan = RunPlan.teacher(parse_params(_params()))
    inputs = TrainingInputs.in_memory(imageset, imageset, 2)
    with exclusive_run(plan, inputs) as key:
        assert not torch.distributed.is_initialized()
        assert distributed.world() == distributed.World()
        assert not other_rank_trains(plan, inputs, key)
        assert key == plan.key(TrainData(torch.from_numpy(images[:, None]), one_hot(labels, 2)))
    one_epoch = OPTIM.model_copy(update={"epochs": 1})
    train_classifier(_model(), _data(), one_epoch, NOISE, unlabeled_ratio=RATIO, device=torch.device("cpu"), seed=0)
    assert not torch.distributed.is_initialized()


def test_several_processes_rerun_the_stage_under_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages._processes import start_processes

    for name in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NOISY_STUDENT_THREADS", "2")
    launched = []

    def fake_relaunch(processes: int, threads: int, nodes: int, endpoint: str) -> None:
        launched.append((processes, threads, nodes, endpoint))
        raise SystemExit(0)

    monkeypatch.setattr(distributed, "relaunch", fake_relaunch)
    with pytest.raises(SystemExit):
        start_processes(parse_params(_params(processes=2)))
    with pytest.raises(SystemExit):  # one process on each of two machines is a job of two ranks too
        start_processes(parse_params(_params(nodes=2, rdzv_endpoint="node0:29500")))
    assert launched == [(2, 2, 1, ""), (1, 2, 2, "node0:29500")]
    argv = ["/repo/stages/teacher.py", "--params", "p.yaml"]
    assert distributed.torchrun_command(2, argv, "stages.teacher", "py") == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "stages.teacher", "--params", "p.yaml",
    ]  # fmt: skip
    assert distributed.torchrun_command(2, argv, None, "py")[-3:] == argv
    # 2 ranks on 2 cores: one thread each
    assert distributed.rank_threads({"NOISY_STUDENT_THREADS": "2", "LOCAL_WORLD_SIZE": "2"}) == 1
    assert distributed.rank_threads({"NOISY_STUDENT_THREADS": "1", "LOCAL_WORLD_SIZE": "2"}) == 1
    assert distributed.rank_threads({"NOISY_STUDENT_THREADS": "8", "LOCAL_WORLD_SIZE": "2"}) == 4


def test_other_nodes_get_the_command_that_joins_node_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    argv = ["/repo/stages/teacher.py", "--params", "my params.yaml"]
    assert distributed.torchrun_command(2, argv, "stages.teacher", "py", nodes=3, node_rank=2, endpoint="n0:29500") == [
        "py", "-m", "torch.distributed.run", "--nnodes=3", "--node_rank=2", "--nproc_per_node=2",
        "--rdzv_backend=static", "--rdzv_endpoint=n0:29500", "--max_restarts=0",
        "-m", "stages.teacher", "--params", "my params.yaml",
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed, "_main_module", lambda: "stages.teacher")
    monkeypatch.setenv("NOISY_STUDENT_ROOT", "/shared/project")
    monkeypatch.setenv("PYTHONPATH", "/shared/project/src")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    line = distributed.join_command(2, 3, 1, "n0:29500", argv)
    # the same folder, project root and interpreter; node 1 of 3; the arguments quoted for a shell
    assert shlex.split(line) == [
        "cd", str(tmp_path), "&&", "env", "NOISY_STUDENT_ROOT=/shared/project", "PYTHONPATH=/shared/project/src",
        *distributed.torchrun_command(2, argv, "stages.teacher", sys.executable, 3, 1, "n0:29500"),
    ]  # fmt: skip


def test_a_collective_failing_for_a_lost_rank_is_one_line() -> None:
    gloo = RuntimeError(
        "\n[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read \nerror [127.0.0.1]:10147: "
        "Connection reset by peer. This is typically caused by a\nremote worker hanging or bugs in the application."
    )
    assert distributed.lost_peer(gloo) == "Read error [127.0.0.1]:10147: Connection reset by peer"
    assert distributed.lost_peer(torch.distributed.DistBackendError("NCCL communicator was aborted")) == (
        "NCCL communicator was aborted"
    )
    assert distributed.lost_peer(RuntimeError("CUDA out of memory")) is None  # a bug or a limit: its traceback
    assert distributed.lost_peer(ValueError("gloo")) is None


def test_several_nodes_need_node_0s_endpoint() -> None:
    with pytest.raises(ParamsError, match=r"key 'distributed.rdzv_endpoint': got ''; expected: node 0's host:port"):
        parse_params(_params(nodes=2))
    with pytest.raises(ParamsError, match=r"key 'distributed.rdzv_endpoint': got 'node0'; expected: host:port"):
        parse_params(_params(nodes=2, rdzv_endpoint="node0"))
    with pytest.raises(ParamsError, match=r"a multiple of the training ranks, .* \(6\)"):
        parse_params(_params(processes=3, nodes=2, rdzv_endpoint="node0:29500"))
    assert parse_params(_params(processes=2, nodes=2, rdzv_endpoint="[::1]:29500")).distributed.ranks == 4


def test_the_resume_key_counts_the_processes_only_when_there_are_several() -> None:
    params = parse_params(_params())
    data = _data()
    one = RunPlan.teacher(params)
    two = RunPlan.teacher(parse_params(_params(processes=2)))
    assert one.key(data) != two.key(data)
    # what the weights depend on is the number of ranks, not how they are spread over machines
    spread = RunPlan.teacher(parse_params(_params(nodes=2, rdzv_endpoint="node0:29500")))
    assert spread.key(data) == two.key(data)
    # the one-process key hashes exactly the fields it hashed before the distributed ones existed
    import hashlib
    import json
    from dataclasses import asdict

    from noisy_student.training.recipe import _jsonable

    fields = {k: v for k, v in asdict(one).items() if k not in ("ranks", "sync_batchnorm")}
    digest = hashlib.sha256(json.dumps(_jsonable(fields), sort_keys=True).encode())
    for t in (data.labeled_images, data.labeled_targets, data.unlabeled_images, data.unlabeled_targets):
        digest.update(str((tuple(t.shape), t.dtype)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    assert one.key(data) == digest.hexdigest()[:16]


# --- params errors ---


def test_batch_sizes_must_divide_by_the_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    p = _params(processes=3)
    p["teacher"]["optim"]["batch_size"] = 30
    p["student"]["optim"]["batch_size"] = 16
    with pytest.raises(ParamsError) as err:
        parse_params(p)
    message = str(err.value)
    expected = "a multiple of the training ranks, distributed.processes x distributed.nodes (3)"
    assert f"key 'student.optim.batch_size': got 16; expected: {expected}" in message
    assert "teacher.optim.batch_size" not in message
    # an iteration's override is checked too, under its own key
    p["student"]["optim"]["batch_size"] = 12
    p["iterations"]["it1"]["student"] = {"optim": {"batch_size": 20}}
    with pytest.raises(ParamsError, match=r"key 'iterations\.it1\.student\.optim\.batch_size': got 20"):
        parse_params(p)
    parse_params(_params(processes=2))  # micro params: batch 16
    # the loop refuses it too, before any work (as rank 0 of 3)
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 3, 0, 3))
    with pytest.raises(ValueError, match="batch_size 16 does not divide by the 3 training processes"):
        train_classifier(_model(), _data(), OPTIM, NOISE, device=torch.device("cpu"), seed=0)


def test_sync_batchnorm_is_refused_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from stages._processes import start_processes

    p = _params(sync_batchnorm=True)
    p["device"] = "cpu"
    with pytest.raises(
        ParamsError, match=r"key 'distributed\.sync_batchnorm': got True; expected: false on device 'cpu'"
    ):
        parse_params(p)
    with pytest.raises(ValueError, match="sync_batchnorm: true needs CUDA"):
        distributed.check_sync_batchnorm(True, torch.device("cpu"))
    with pytest.raises(ValueError, match="needs CUDA"):
        train_classifier(_model(), _data(), OPTIM, NOISE, device=torch.device("cpu"), seed=0, sync_batchnorm=True)
    # device: auto on a machine without CUDA: the stage stops with one line before any work
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    import typer

    with pytest.raises(typer.Exit) as exit_:
        start_processes(parse_params(_params(sync_batchnorm=True)))
    assert exit_.value.exit_code == 2


def test_synced_batchnorm_shares_the_weights_and_gives_the_layers_back(one_thread: None) -> None:
    model = _model()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms
    with distributed.synced_batchnorm(model):
        assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
        model.train()
        model(torch.rand(4, 1, 16, 16)).sum().backward()  # no process group: plain batch norm maths
    assert [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == norms
    assert all(type(m) is torch.nn.BatchNorm2d for m in norms)
    assert all(int(m.num_batches_tracked) == 1 for m in norms), "the synced layers trained the original buffers"
    assert norms[0].weight.grad is not None


if __name__ == "__main__":
    _ddp_rank(Path(sys.argv[1]))
