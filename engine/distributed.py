"""Several processes, one run: the process group that `torch.distributed.run` (torchrun) sets up, and the few
collectives the engine needs beside DistributedDataParallel's own gradient all-reduce.

Every rank holds the same weights, optimizer and random generators, and its own contiguous share of the
global batch's carry slots: rank r of W owns slots [r B / W, (r + 1) B / W). The lead rank (rank 0 on one
machine; on several, the lowest rank on the machine that holds the run folder) alone owns the run store, the
control socket, checkpoints and printing; the others hear its decisions at every step boundary.

One process (no torchrun) is a World of size 1 whose collectives do nothing.
"""

from __future__ import annotations

import contextlib
import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

# a rank that waits longer than this on a peer gives up: a paused run still meets at every boundary (10 Hz),
# so only a vanished machine or a stuck peer takes this long
TIMEOUT = timedelta(minutes=10)


class World:
    """This process's place among the run's processes."""

    def __init__(self, rank: int = 0, size: int = 1, lead: int = 0, local_rank: int = 0,
                 peers: list[dict] | None = None):
        self.rank, self.size, self.lead, self.local_rank = rank, size, lead, local_rank
        # every rank's host and pid, to name a rank that died
        self.peers = peers or [{"rank": 0, "host": socket.gethostname(), "pid": os.getpid()}]

    @staticmethod
    def launched() -> bool:
        """Whether torchrun started this process with more than one process in the run."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    @staticmethod
    def backend() -> str:
        """Gloo carries CPU tensors (and the collectives of objects); NCCL CUDA tensors, where there is CUDA."""
        cuda = torch.cuda.is_available() and dist.is_nccl_available()
        return "cpu:gloo,cuda:nccl" if cuda else "gloo"

    @classmethod
    def join(cls, holds_run: bool) -> World:
        """Join the process group torchrun described in the environment; the lead is the lowest rank that was
        given the run folder. A rank on a machine with CUDA makes the card of its local rank its current one."""
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        backend = cls.backend()
        if "nccl" in backend and local_rank < torch.cuda.device_count():
            # NCCL's communicators take the current card: without this every rank would open one on card 0
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=TIMEOUT)
        rank, size = dist.get_rank(), dist.get_world_size()
        peers: list = [None] * size
        dist.all_gather_object(peers, {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
                                       "holds_run": holds_run})
        leads = [p["rank"] for p in peers if p["holds_run"]]
        return cls(rank, size, min(leads) if leads else -1, local_rank, peers)

    @property
    def is_lead(self) -> bool:
        return self.rank == self.lead

    def close(self) -> None:
        if self.size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def describe(self) -> dict:
        """The world as the run records it: its size, the lead, each rank's host and pid."""
        return {"world_size": self.size, "lead": self.lead,
                "ranks": [{"rank": p["rank"], "host": p["host"], "pid": p["pid"]} for p in self.peers]}

    # ---- the batch ----

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of n slots (or samples)."""
        return slice(self.rank * n // self.size, (self.rank + 1) * n // self.size)

    # ---- collectives (no-ops in one process) ----

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            t = t.clone()
            dist.all_reduce(t, dist.ReduceOp.SUM)
        return t

    def max(self, t: torch.Tensor) -> torch.Tensor:
        if self.size > 1:
            t = t.clone()
            dist.all_reduce(t, dist.ReduceOp.MAX)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's (n, ...) tensor, joined along the first axis in rank order: the global batch from the
        shards. Every rank's n must be equal."""
        if self.size == 1:
            return t
        flag = t.dtype == torch.bool
        part = (t.to(torch.uint8) if flag else t).contiguous()  # gloo has no bool
        parts = [torch.empty_like(part) for _ in range(self.size)]
        dist.all_gather(parts, part)
        out = torch.cat(parts)
        return out.bool() if flag else out

    def agree(self, value: float) -> bool:
        """Whether every rank holds the same `value` (a checksum of what must be equal everywhere)."""
        if self.size == 1:
            return True
        spread = self.max(torch.tensor([value, -value], dtype=torch.float64))
        return bool(spread[0] == -spread[1])

    def from_lead(self, obj):
        """The lead's `obj` on every rank (pickled; for rare, small-to-medium things: config, checkpoints)."""
        if self.size == 1:
            return obj
        box = [obj if self.is_lead else None]
        dist.broadcast_object_list(box, src=self.lead)
        return box[0]

    # ---- DistributedDataParallel ----

    def wrap(self, model: torch.nn.Module, device: torch.device, find_unused: bool) -> torch.nn.Module:
        """The module every training forward goes through, called as forward(fn, ...) for fn(model, ...):
        DistributedDataParallel around it across ranks."""
        call = ModelCall(model)
        if self.size == 1:
            return call
        from torch.nn.parallel import DistributedDataParallel

        # the buffers (initial latents, rotary tables, masks) never change: nothing to broadcast per step
        return DistributedDataParallel(call, device_ids=[device.index] if device.type == "cuda" else None,
                                       forward_sync_buffers=False, find_unused_parameters=find_unused)

    def sync_gradients(self, forward: torch.nn.Module, last: bool):
        """Around one micro-batch's forward and backward: only the last one all-reduces the gradients."""
        if self.size == 1 or last:
            return contextlib.nullcontext()
        return forward.no_sync()

    # ---- faults ----

    def gone(self) -> list[dict]:
        """The peers on this machine whose process has ended (a dead rank names itself this way; a rank on
        another machine cannot be looked at from here)."""
        import psutil

        host, out = socket.gethostname(), []
        for p in self.peers:
            if p["host"] != host or p["rank"] == self.rank:
                continue
            try:
                if psutil.Process(p["pid"]).status() != psutil.STATUS_ZOMBIE:
                    continue
            except psutil.NoSuchProcess:
                pass
            out.append(p)
        return out


class ModelCall(torch.nn.Module):
    """One training forward as fn(model, *args): what DistributedDataParallel wraps, so that what it follows to
    find the parameters in use is the value the loss is made from (sleep's distillation loss alone, which leaves
    the halting head out), not every output of the model."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)
