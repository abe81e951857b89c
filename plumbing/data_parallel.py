"""Data-parallel training over several processes started by torchrun: the process group, who does
what, and the few collectives the training loop needs.

    torchrun --nproc_per_node N train.py dpo ...     N processes ("ranks"), one per GPU, or N on a
    CPU

torchrun starts N copies of the command with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in their environment; `process_group` joins them (NCCL on CUDA, each rank on
cuda:LOCAL_RANK; gloo on the CPU) for the duration of a training command. Without WORLD_SIZE (or
with WORLD_SIZE=1) nothing is initialised, this process is rank 0 of 1 and every collective here is
the identity: a single process runs exactly the code it always ran.

How loop.py uses them:
  * Examples. Every rank computes the step's example indices, or pre-training windows (a pure
    function of seed and step), and takes a contiguous 1/N of them, rank 0 the first: together, the
    single-process batch.
  * Gradients. Each rank's loss is already divided by the size of the whole step (its pairs, or its
    target tokens summed over the ranks with `all_reduce_sum`), so the step's gradient is the SUM of
    the ranks'
    gradients: `sum_gradients` all-reduces each trainable tensor once, after the last micro-batch.
    Clipping then sees the global gradient, the same on every rank, and every rank takes the same
    AdamW step.
    Why not DistributedDataParallel: it averages (the loss would need a factor N), wraps the model
    (its state_dict keys change; the LoRA reference view and torch.compile would see a wrapper) and
    needs no_sync() around all but the last micro-batch. What it adds, overlapping the all-reduce
    with the backward pass, is speed at scale; one readable loop after backward is enough here.
  * Numbers every rank needs: the per-pair values of a step (`all_gather_cat`) for its metrics, the
    DPO reference log-probs and the held-out evaluation (batch j on rank j % N: `in_turn`, then
    `gather_in_turn`). Every rank computes the same metrics from the same gathered values, so every
    rank decides alike (early stopping).
  * Files and output. Rank 0 alone writes and prints (`is_main`); `barrier` keeps the others from
    going on before its files exist.
"""

import contextlib
import gc
import os

import torch
import torch.distributed as dist


class LaunchError(RuntimeError):
    """The processes of a torchrun launch cannot form their group (a missing variable, a missing
    GPU)."""


def world_size():
    """Processes training together: the process group's size, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    """This process's index in the group, 0..world_size()-1 (0 without a group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main():
    """True on rank 0, the one that writes files and prints."""
    return rank() == 0


def cpu_threads_per_process():
    """The CPU threads each process gets by default (--threads 0): under torchrun with several
    processes on this node, the machine's cores shared among them (torchrun itself leaves each one
    thread); 0 (torch's default, one per core) for a single process."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, (os.cpu_count() or 1) // local) if local > 1 else 0


def main_only(log):
    """`log` on rank 0, a function that prints nothing on the other ranks."""
    return log if is_main() else (lambda *args, **kwargs: None)


@contextlib.contextmanager
def process_group(device="auto"):
    """Join the process group torchrun set up in the environment, for the duration of the `with`
    block.

    `device`: the --device value; CUDA (cuda, or auto with a GPU) uses NCCL with this rank on
    cuda:LOCAL_RANK, the CPU gloo. A no-op without WORLD_SIZE or with WORLD_SIZE=1. Raises
    LaunchError when it cannot join."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda and local_rank >= torch.cuda.device_count():
        raise LaunchError(f"--device {device!r}: this process has LOCAL_RANK {local_rank} but the "
                          f"machine has {torch.cuda.device_count()} CUDA devices: start one "
                          f"process per GPU at most")
    try:
        if cuda:
            torch.cuda.set_device(local_rank)  # "cuda" now means cuda:LOCAL_RANK for this process
            dist.init_process_group("nccl", device_id=torch.device("cuda", local_rank))
        else:
            dist.init_process_group("gloo")
    except (RuntimeError, ValueError) as e:  # e.g. MASTER_ADDR not set: launched without torchrun
        raise LaunchError(f"cannot join the torchrun process group "
                          f"(WORLD_SIZE={os.environ['WORLD_SIZE']}, launch "
                          f"with torchrun): {e}") from e
    try:
        yield
        # every rank tears the group down together, once rank 0 has written its files: a rank that
        # left early while the others still held their connections aborted at exit, rarely, with
        # "terminate called without an active exception" (gloo, 2 processes on 2 cores)
        dist.barrier()
    finally:
        dist.destroy_process_group()
        gc.collect()  # the process group's C++ side goes now, not during interpreter shutdown


# -----------------------------------------------------------------------------
# Collectives: each is the identity for a single process

def _device():
    """Where collectives take their tensors: the current GPU for NCCL, the CPU for gloo."""
    return (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
            else torch.device("cpu"))


def barrier():
    """Wait until every rank got here (e.g. until rank 0 has written what the others read next)."""
    if world_size() > 1:
        dist.barrier()


def all_reduce_sum(number):
    """A Python int or float summed over the ranks (the same result on every rank)."""
    if world_size() == 1:
        return number
    total = torch.tensor(number, dtype=torch.int64 if isinstance(number, int) else torch.float64,
                         device=_device())
    dist.all_reduce(total)
    return total.item()


def sum_gradients(model):
    """Replace the gradient of each trainable parameter of `model` by its sum over the ranks.

    Frozen parameters (LoRA's base weights) are skipped; a trainable one without a gradient on this
    rank takes part with zeros, so that every rank issues the same all-reduces."""
    if world_size() == 1:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)  # sum (the default op), in place


def all_gather_cat(tensor):
    """Every rank's `tensor` (the same shape on each), concatenated along dim 0 in rank order.

    Shape: (n, ...) on each rank -> (world_size * n, ...), on `tensor`'s device."""
    if world_size() == 1:
        return tensor
    local = tensor.to(_device()).contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local)
    return torch.cat(parts).to(tensor.device)


def gather_objects(obj):
    """A list of every rank's `obj` (any picklable value, CPU tensors inside), in rank order."""
    if world_size() == 1:
        return [obj]
    objects = [None] * world_size()
    dist.all_gather_object(objects, obj)
    return objects


def in_turn(items):
    """This rank's share of `items` when the ranks take turns: item j goes to rank j %
    world_size()."""
    return items[rank()::world_size()]


def gather_in_turn(results):
    """Every rank's `results` for its in_turn(items), put back in the order of `items`: the same
    list everywhere.

    Results are tensors, dicts of tensors or numbers; from other ranks they arrive on the CPU."""
    if world_size() == 1:
        return results
    parts = gather_objects([_to_cpu(r) for r in results])
    return [parts[j % world_size()][j // world_size()] for j in range(sum(len(p) for p in parts))]


def _to_cpu(value):
    """`value` with its tensors on the CPU (a tensor, a dict of them, or anything else
    unchanged)."""
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value.cpu() if isinstance(value, torch.Tensor) else value
