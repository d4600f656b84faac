"""Several training processes, on one machine or several: torchrun, DistributedDataParallel, ranks.

``distributed.processes: N`` in the params trains a teacher or a student with ``N`` processes. The
stage is still started as one process (``python -m stages.teacher ...``, by DVC or by hand); it runs
its own command again under ``torchrun --standalone --nproc_per_node N`` and exits with torchrun's
code (:func:`relaunch`). With ``distributed.nodes: M`` that machine is node 0 of an ``M``-machine job
(static rendezvous at ``distributed.rdzv_endpoint``): it prints the command every other node runs
(:func:`join_command`) and waits for them. Every rank joins the process group (:func:`process_group`:
gloo on CPU, nccl on CUDA with GPU ``LOCAL_RANK`` each), the training loop wraps the model in DDP,
each rank trains on its contiguous slice of the same globally drawn batch and DDP averages the
gradients, so ``optim.batch_size`` stays the global batch. Rank 0 alone tracks, evaluates and writes;
the others wait for it at barriers.

With one process nothing here runs: no torchrun, no process group, :func:`world` is the single
process and every collective below is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import torch
import torch.distributed as dist
from torch import nn

THREADS_ENV = "NOISY_STUDENT_THREADS"  # the stage's torch threads; split between the ranks of one machine
TORCHRUN_ENV = ("LOCAL_RANK", "WORLD_SIZE")  # set by torchrun in every rank it starts
# rank 0 evaluates and writes while the others wait in a collective: far longer than any step
GROUP_TIMEOUT = timedelta(hours=1)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes; the defaults are the single process."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that tracks, evaluates, checkpoints and writes outputs."""
        return self.rank == 0


def world() -> World:
    """The current process group's world, or the single process when there is none."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    rank, size = dist.get_rank(), dist.get_world_size()
    env = os.environ
    return World(rank, size, int(env.get("LOCAL_RANK", rank)), int(env.get("LOCAL_WORLD_SIZE", size)))


def under_torchrun(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is a rank started by torchrun."""
    return any(name in environ for name in TORCHRUN_ENV)


def torchrun_command(
    processes: int,
    argv: Sequence[str],
    module: str | None,
    python: str = sys.executable,
    nodes: int = 1,
    node_rank: int = 0,
    endpoint: str = "",
) -> list[str]:
    """The command that runs ``argv`` (this process's ``sys.argv``) as ``processes`` ranks on this machine.

    ``module``: the module run with ``python -m`` (``__main__.__spec__.name``), None for a script.
    ``nodes`` > 1: this machine is node ``node_rank`` of a job whose node 0 listens at ``endpoint``
    (host:port). The rendezvous is static, not c10d: c10d numbers the nodes in the order of their
    hosts' names and process ids, so global rank 0 (which tracks and writes the outputs) could land
    on a machine that is not the one DVC runs on; with ``--node-rank`` node 0 always holds it.
    """
    target = ["-m", module, *argv[1:]] if module else list(argv)
    if nodes == 1:
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *target]
    job = [f"--nnodes={nodes}", f"--node_rank={node_rank}", f"--nproc_per_node={processes}"]
    rendezvous = ["--rdzv_backend=static", f"--rdzv_endpoint={endpoint}", "--max_restarts=0"]
    return [python, "-m", "torch.distributed.run", *job, *rendezvous, *target]


# the environment a rank on another node needs to find this job's files: the project root (checkpoints)
_NODE_ENV = ("NOISY_STUDENT_ROOT", "DVC_ROOT", "PYTHONPATH")


def join_command(processes: int, nodes: int, node_rank: int, endpoint: str, argv: Sequence[str]) -> str:
    """The shell line node ``node_rank`` runs to join this stage's job: same folder, same interpreter,
    same stage arguments, the project root and ``PYTHONPATH`` of this process. Every node must see the
    project's files at the same paths (a shared file system, as on a cluster)."""
    env = [f"{name}={os.environ[name]}" for name in _NODE_ENV if os.environ.get(name)]
    command = torchrun_command(processes, argv, _main_module(), sys.executable, nodes, node_rank, endpoint)
    return f"cd {shlex.quote(os.getcwd())} && " + shlex.join([*(["env", *env] if env else []), *command])


def _main_module() -> str | None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else None


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies, even by SIGKILL (no orphaned trainers)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def relaunch(processes: int, threads: int, nodes: int = 1, endpoint: str = "") -> NoReturn:
    """Run this process's own command as ``processes`` torchrun ranks, wait for them, exit with torchrun's code.

    ``threads``: this stage's torch threads, shared out between the ranks (:func:`rank_threads`).
    ``nodes`` > 1: this machine is node 0 of the job; the command each other node runs is printed
    first (:func:`join_command`). torchrun is stopped (it stops its ranks) when this process dies or
    is interrupted. When the ranks fail, one last line says so and how to resume.
    """
    env = {**os.environ, THREADS_ENV: str(threads), "OMP_NUM_THREADS": str(max(1, threads // processes))}
    command = torchrun_command(processes, sys.argv, _main_module(), sys.executable, nodes, 0, endpoint)
    print(f"distributed: {processes} x {nodes}: {' '.join(command)}", file=sys.stderr, flush=True)
    for node in range(1, nodes):
        line = join_command(processes, nodes, node, endpoint, sys.argv)
        print(f"distributed: node {node} of {nodes} runs: {line}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(command, env=env, preexec_fn=die_with_parent)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait()
    if code:
        where = f"{processes * nodes} ranks on {nodes} nodes" if nodes > 1 else f"{processes} ranks"
        print(
            f"distributed: the job of {where} failed (torchrun exit {code}; the first error is above); "
            "run the stage again (on every node) to resume from what it saved",
            file=sys.stderr,
            flush=True,
        )
    sys.exit(code if code >= 0 else 128 - code)


def rank_threads(environ: Mapping[str, str] = os.environ) -> int:
    """Torch threads of one rank: the stage's threads (``NOISY_STUDENT_THREADS``, else this machine's
    cores) divided by the ranks on this machine, at least 1."""
    total = int(environ.get(THREADS_ENV) or len(os.sched_getaffinity(0)))
    return max(1, total // int(environ.get("LOCAL_WORLD_SIZE", "1")))


def check_sync_batchnorm(sync_batchnorm: bool, device: torch.device) -> None:
    """SyncBatchNorm has no CPU (or XLA) kernel: refuse it anywhere but CUDA."""
    if sync_batchnorm and device.type != "cuda":
        raise ValueError(
            f"distributed.sync_batchnorm: true needs CUDA (PyTorch's SyncBatchNorm has no {device.type} kernel); "
            "set it to false on this machine"
        )


def dead_loader_worker(exc: BaseException) -> str | None:
    """The message when ``exc`` (or an error it was raised from) is torch's report of a DataLoader worker that
    died (killed, out of memory), else None. torch raises it from its SIGCHLD handler, wherever the training
    process is at that moment, so a library it was in may have wrapped it (MLflow does)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = " ".join(str(seen).split())
        if "DataLoader worker (pid" in text:
            return text[text.index("DataLoader worker (pid") :]
        seen = seen.__cause__ or seen.__context__
    return None


@contextmanager
def process_group(device: torch.device) -> Iterator[World]:
    """Under torchrun: this rank in the job's process group for the block; otherwise the single process.

    gloo on CPU; nccl on CUDA, with GPU ``LOCAL_RANK`` as this rank's device. Raises ValueError for
    other devices and for more ranks than GPUs.
    """
    if not under_torchrun() or dist.is_initialized():
        yield world()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"torchrun rank {local_rank} needs GPU {local_rank}; "
                f"this machine has {torch.cuda.device_count()} (one GPU per process)"
            )
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ValueError(f"several processes run on CPU (gloo) or CUDA (nccl), not on {device.type}")
    dist.init_process_group(backend, timeout=GROUP_TIMEOUT)
    try:
        yield world()
    finally:
        dist.destroy_process_group()


def lost_peer(exc: BaseException) -> str | None:
    """Why a collective failed when the cause is another rank gone (its process or its machine stopped),
    in one line; None for any other error. gloo raises a plain RuntimeError naming its transport, nccl
    a :class:`torch.distributed.DistError`. Raised on every surviving rank at its next collective."""
    text = " ".join(str(exc).split())
    if not (isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError) and "gloo" in text)):
        return None
    text = re.sub(r"^\[[^\]]*\] ", "", text)  # gloo's [source file:line] prefix
    return text.split(". This is typically")[0]


def rank_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for CUDA among several processes, else ``device`` unchanged."""
    w = world()
    return torch.device("cuda", w.local_rank) if device.type == "cuda" and w.size > 1 else device


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if world().size > 1:
        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if world().size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T] | None:
    """Every rank's ``value`` in rank order on rank 0, None on the others (``[value]`` for one process)."""
    w = world()
    if w.size == 1:
        return [value]
    out: list[T] | None = [None] * w.size if w.main else None  # type: ignore[list-item]
    dist.gather_object(value, out, dst=0)
    return out


def mean(value: torch.Tensor) -> float:
    """The mean of a scalar over the ranks (the global batch's loss when every rank's slice is equal)."""
    if world().size == 1:
        return float(value.detach())
    t = value.detach().float().reshape(1).to(_collective_device())
    dist.all_reduce(t)
    return float(t) / world().size


def same_on_every_rank(value: int) -> bool:
    """Whether every rank holds the same ``value`` (True for one process)."""
    if world().size == 1:
        return True
    t = torch.tensor([value, -value], dtype=torch.long, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t[0]) == -int(t[1])


@contextmanager
def synced_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Every batch norm of ``model`` as a synchronized one for the block (statistics over the global batch).

    timm's converter (it knows timm's BatchNormAct layers) builds layers that share the originals'
    parameters and running statistics, so training changes both; the original layers are put back
    after the block, so the model keeps plain, rebuildable layer types. The model must already be on
    its device (moving it afterwards would stop the sharing of buffers).
    """
    if not enabled:
        yield model
        return
    from timm.layers import convert_sync_batchnorm

    norm = nn.modules.batchnorm._BatchNorm
    originals = [(m, name, c) for m in model.modules() for name, c in m.named_children() if isinstance(c, norm)]
    if isinstance(model, norm):
        raise ValueError("synced_batchnorm needs a model that contains its batch norms")
    convert_sync_batchnorm(model)
    try:
        yield model
    finally:
        for parent, name, layer in originals:
            layer.train(parent.get_submodule(name).training)
            parent.add_module(name, layer)


@contextmanager
def data_parallel(task: Any, model: nn.Module, sync_batchnorm: bool = False) -> Iterator[None]:
    """With several ranks: ``task`` (a timm ``TrainingTask`` of ``model``) runs its forward and backward
    through a DDP wrapper of ``model`` for the block, with synchronized batch norms when
    ``sync_batchnorm``; the plain module is the task's again afterwards. One process: nothing changes.

    Wrap after creating the optimizer and the EMA copy: both keep the plain module (its parameters are
    the wrapper's), and so do the task's state dicts (timm unwraps DDP).
    """
    if world().size == 1:
        yield
        return
    with synced_batchnorm(model, enabled=sync_batchnorm):
        device = next(model.parameters()).device
        task.prepare_distributed(device_ids=[device.index] if device.type == "cuda" else None)
        try:
            yield
        finally:
            task.trainable_module = model  # the wrapper (and its gradient hooks) goes with the block
