"""Thin helpers for one process per GPU (torchrun). Every function is a no-op in a single process.

    dist_info = init_distributed(args.device)   # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    all_reduce_mean_grads(params)               # before each optimiser step: the gradient of the global batch
    terms = all_reduce_mean(terms)              # the mean over ranks of a tensor (the logged losses)
    barrier()                                   # the other ranks wait for rank 0's checkpoint / evaluation

Timeouts (see docs/distributed.md): a collective that waits longer than STARGAN_DIST_TIMEOUT_S seconds (default 600)
for a dead or stuck peer fails with an error naming the operation, instead of hanging; barrier() waits up to
STARGAN_DIST_BARRIER_TIMEOUT_S (default 6 h), as long as rank 0's evaluation may take.
"""
import datetime
import os
import time

import torch
import torch.distributed as dist
from munch import Munch

DEFAULT_TIMEOUT_S = 600
DEFAULT_BARRIER_TIMEOUT_S = 6 * 3600

_barrier = Munch(timeout_s=DEFAULT_BARRIER_TIMEOUT_S, count=0)


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def _env_seconds(name, default):
    value = os.environ.get(name)
    if value in (None, ''):
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise SystemExit(f'{name}={value!r}: expected a number of seconds')
    if seconds <= 0:
        raise SystemExit(f'{name}={value!r}: expected a positive number of seconds')
    return seconds


def resolve_device(device_arg='auto'):
    """--device as a torch.device: auto is cuda when a GPU is visible, else cpu. The one place that decides."""
    if device_arg in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device_arg)


def init_distributed(device_arg='auto', timeout_s=None):
    """Starts the process group when launched by torchrun (WORLD_SIZE > 1) and picks this rank's device:
    cuda:LOCAL_RANK with nccl on GPUs, gloo on CPU. timeout_s (default: $STARGAN_DIST_TIMEOUT_S, else 600) bounds
    how long a collective waits for a dead or stuck peer before failing."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    device = resolve_device(device_arg)
    if world_size > 1 and not is_distributed():
        if timeout_s is None:
            timeout_s = _env_seconds('STARGAN_DIST_TIMEOUT_S', DEFAULT_TIMEOUT_S)
        _barrier.timeout_s = _env_seconds('STARGAN_DIST_BARRIER_TIMEOUT_S', max(DEFAULT_BARRIER_TIMEOUT_S, timeout_s))
        _barrier.count = 0
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        if device.type == 'cuda':
            if device.index is not None and device.index != local_rank:
                print(f'--device {device_arg}: under torchrun each process uses cuda:LOCAL_RANK '
                      f'(cuda:{local_rank} here)')
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)  # NCCL creates its communicator on the current device
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        timeout = datetime.timedelta(seconds=timeout_s)
        restart = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
        if restart == '0':
            dist.init_process_group(backend=backend, timeout=timeout)
        else:
            dist.init_process_group(backend=backend, timeout=timeout, rank=int(os.environ['RANK']),
                                    world_size=world_size, store=_attempt_store(restart, world_size, timeout))
    return Munch(device=device, rank=get_rank(), world_size=get_world_size())


def _attempt_store(restart, world_size, timeout):
    """The rendezvous store under a prefix of its own for a restarted attempt (torchrun --max-restarts): torchrun's
    agent keeps serving the same store across attempts, and the process group's keys of the dead attempt (the
    ranks' addresses, the start-up barrier's count) would otherwise be read by the new one, whose start then hangs
    until the timeout."""
    rank = int(os.environ['RANK'])
    agent = os.environ.get('TORCHELASTIC_USE_AGENT_STORE') == 'True'  # else rank 0 serves it, anew each attempt
    store = dist.TCPStore(os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT']), world_size,
                          is_master=not agent and rank == 0, timeout=timeout, multi_tenant=not agent)
    return dist.PrefixStore(f'stargan_attempt_{restart}', store)


def all_reduce_mean_grads(params):
    """Averages the gradients of params across ranks, in one flat buffer (one collective per optimiser step).

    Every rank must hold gradients for the same parameters (true here: which parameters get a gradient depends on
    the network and the step, never on the data), or the buffers would differ in size."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= get_world_size()
    torch._foreach_copy_(grads, [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in grads]), grads)])


def all_reduce_mean(tensor):
    """The mean over ranks of a tensor (a new tensor; the input itself in one process)."""
    if not is_distributed():
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / get_world_size()


def any_rank(flag):
    """Whether flag is true on any rank (a host sync: only on the steps that sync anyway)."""
    if not is_distributed():
        return bool(flag)
    device = torch.device('cuda', torch.cuda.current_device()) if dist.get_backend() == 'nccl' else 'cpu'
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier():
    """Waits for every rank, e.g. while rank 0 evaluates. Not a collective: the ranks count themselves in the
    rendezvous store (the one torchrun set up) and poll it, so the wait is bounded by STARGAN_DIST_BARRIER_TIMEOUT_S
    rather than by the collectives' timeout and NCCL's watchdog, and it needs no second network transport."""
    if not is_distributed():
        return
    store = getattr(dist.distributed_c10d, '_get_default_store', lambda: None)()
    if store is None:  # a PyTorch without the helper: a plain barrier, bounded by STARGAN_DIST_TIMEOUT_S
        dist.barrier()
        return
    _barrier.count += 1
    key = f'stargan_barrier/{os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")}/{_barrier.count}'
    if store.add(key, 1) == get_world_size():
        store.set(key + '/done', '1')
    deadline = time.monotonic() + _barrier.timeout_s
    while not store.check([key + '/done']):
        if time.monotonic() > deadline:
            raise RuntimeError(f'rank {get_rank()}: waited {_barrier.timeout_s:.0f} s at a barrier for the other '
                               f'ranks (STARGAN_DIST_BARRIER_TIMEOUT_S); a rank died or is stuck')
        time.sleep(0.2)


def cleanup():
    if is_distributed():
        dist.destroy_process_group()
