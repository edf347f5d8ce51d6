"""Several GPUs with torchrun: PyTorch's DistributedDataParallel, used the way nanoGPT uses it.

    torchrun --standalone --nproc_per_node 8 train_unet.py --preset gpu
    torchrun --standalone --nproc_per_node 8 finetune.py --preset gpu

torchrun starts one process per GPU and sets RANK, LOCAL_RANK and WORLD_SIZE. Every process
makes the same global batch of a step (its data and noise are fixed by (seed, step), seeds.py)
and trains on its own share of the rows (train_loop.Batch.rows); DDP averages the gradients,
so a step is the step one process takes on the whole batch. Rank 0 alone writes checkpoints,
metrics and grids, samples and evaluates; the others wait for it (`barrier`) where they need
what it wrote. Without torchrun every function here is a no-op for one process. On CPUs the
backend is gloo (what the tests run), on GPUs NCCL.
"""
import atexit
import datetime
import os

import torch
import torch.distributed as dist


def setup() -> None:
    """Join torchrun's process group, if started by torchrun; each rank gets its own GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 or dist.is_initialized():
        return
    cuda = torch.cuda.is_available()
    if cuda:  # "cuda" then means this rank's GPU
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # rank 0 evaluates and samples between training runs while the others wait: a long timeout
    dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=12))
    atexit.register(dist.destroy_process_group)


def rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def is_main() -> bool:
    """The process that writes files, samples and evaluates (the only one without torchrun)."""
    return rank_world()[0] == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks (the whole batch's loss from each rank's share)."""
    if not dist.is_initialized():
        return value
    value = value.clone()
    dist.all_reduce(value)  # a sum: gloo has no average
    return value / dist.get_world_size()


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model that trains: DDP around it under torchrun (gradients averaged over ranks)."""
    if not dist.is_initialized():
        return model
    device = next(model.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
