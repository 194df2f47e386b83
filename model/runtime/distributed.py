"""Several processes, one result: the scripts under ``torchrun`` (``torch.distributed``).

    torchrun --nproc_per_node 2 train_cnn.py --dataset shapes
    torchrun --nproc_per_node 4 max_activation_search.py --dataset imagefolder --data-dir big
    torchrun --nproc_per_node 2 evaluate_attributions.py --dataset shapes --num-images 2000

``torchrun`` starts the script once per process with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set; :func:`model.cli.run` then joins its process group (gloo on the CPU, NCCL on
CUDA, one GPU per process: ``cuda:LOCAL_RANK``) and :func:`current` tells the code which
process it is. Without torchrun :func:`current` is :data:`ALONE` and nothing here does any
communication, so every function below is also the one-process code path.

Work is shared so that the result equals one process:

- scans (max activation search, evaluation, test accuracy) give each process **whole batches**
  of the one-process run (:meth:`Processes.my_batches`): batch b goes to process b mod size.
  Each batch is computed exactly as in one process, and the results are merged exactly.
- training gives each process **a part of every global batch** (:meth:`Processes.part`); the
  loss is scaled so that DistributedDataParallel's mean of the gradients is the gradient of the
  one-process batch's mean loss (:func:`model.training.loop.train_one_epoch`).
"""
import os
import sys
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from model.errors import UserError

# Collectives wait this long for the slowest process. gloo's default, 30 minutes, is too short
# for a rank 0 that writes figures while the others wait; a dead process ends the group at
# once anyway (torchrun stops the others).
COLLECTIVE_TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Processes:
    """This process's place in the group: ``rank`` of ``size`` (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self):
        """Whether this process writes the outputs and prints (rank 0)."""
        return self.rank == 0

    @property
    def several(self):
        return self.size > 1

    def part(self, count):
        """The rows of a global batch of ``count`` images that this process trains on: a
        contiguous slice, the first ``count % size`` processes one image more (rank 0 never
        gets none)."""
        base, extra = divmod(count, self.size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def my_batches(self, count, batch_size):
        """This process's whole batches of a scan over ``count`` items in ``batch_size``
        batches: (start, stop) of batches rank, rank + size, ..."""
        starts = range(self.rank * batch_size, count, self.size * batch_size)
        return [(start, min(start + batch_size, count)) for start in starts]

    def my_indices(self, count, batch_size):
        """The item indices of :meth:`my_batches`, in order (a 1-D int64 tensor)."""
        ranges = [torch.arange(start, stop) for start, stop in self.my_batches(count, batch_size)]
        return torch.cat(ranges) if ranges else torch.zeros(0, dtype=torch.int64)

    def label(self):
        """``process 1 of 2: `` before a message of a process other than rank 0."""
        return f"process {self.rank} of {self.size}: " if not self.main else ""


ALONE = Processes()

_current = ALONE


def current():
    """The :class:`Processes` the running code belongs to (:data:`ALONE` without torchrun)."""
    return _current


def launched_by_torchrun():
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def alone():
    """Inside the block the code runs as one process, whatever the group: for work that only
    rank 0 does (the report's per-image figures) while the others wait or have finished."""
    global _current
    previous, _current = _current, ALONE
    try:
        yield
    finally:
        _current = previous


@contextmanager
def process_group(device):
    """Join torchrun's process group for the block (gloo for ``device`` cpu, NCCL for cuda)
    and make :func:`current` say which process this is. Processes other than rank 0 print
    nothing on stdout (rank 0 reports for all); errors still reach stderr. The group is left
    on success only: after a failure the process ends, and leaving would wait for the others.
    """
    global _current
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if backend == "nccl":  # all_gather_object moves its buffers to the current GPU
        torch.cuda.set_device(device)
    dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                            device_id=device if backend == "nccl" else None)
    _current = Processes(dist.get_rank(), dist.get_world_size())
    with open(os.devnull, "w") as null, redirect_stdout(null if _current.rank else sys.stdout):
        yield _current
    _current = ALONE
    # Every process reaches the end before any tears its connections down: a process that
    # left while another was still closing its side aborted once under load
    # ("terminate called without an active exception", tests/test_distributed.py).
    dist.barrier()
    dist.destroy_process_group()


def local_cuda_index():
    """The GPU of this process under torchrun: ``LOCAL_RANK`` (one GPU per process)."""
    index = int(os.environ.get("LOCAL_RANK", "0"))
    if index >= torch.cuda.device_count():
        raise UserError(f"torchrun started process {index} on this machine, but it has only "
                        f"{torch.cuda.device_count()} CUDA device(s); use --nproc_per_node "
                        f"{torch.cuda.device_count()} or --device cpu")
    return index


def gather(value):
    """Every process's ``value`` (any picklable object, tensors moved to the CPU), in rank
    order; one process: ``[value]``."""
    processes = current()
    if not processes.several:
        return [value]
    gathered = [None] * processes.size
    dist.all_gather_object(gathered, _to_cpu(value))
    return gathered


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def sum_over_processes(tensor):
    """``tensor`` summed over every process (in place; returned); one process: itself."""
    if current().several:
        dist.all_reduce(tensor)
    return tensor


def share_buffers(module):
    """Give every process rank 0's buffers (BatchNorm running statistics): each process
    updated its own copy on its part of the last batch."""
    if current().several:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def is_group_failure(error):
    """Whether ``error`` says another process of the group went away (its connection closed,
    a collective timed out) rather than what this process did wrong."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        clue in text for clue in ("Connection closed by peer", "Connection reset by peer",
                                  "[gloo", "ProcessGroup", "NCCL"))
