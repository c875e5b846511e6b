"""Thin helpers for one process per GPU (torchrun). Every function is a no-op in a single process.

    dist_info = init_distributed(args)   # reads torchrun's RANK / WORLD_SIZE / LOCAL_RANK
    all_reduce_mean_grads(params)        # before each optimiser step: the gradient of the global batch
"""
import datetime
import os

import torch
import torch.distributed as dist
from munch import Munch


def is_distributed():
    return dist.is_available() and dist.is_initialized()


def get_rank():
    return dist.get_rank() if is_distributed() else 0


def get_world_size():
    return dist.get_world_size() if is_distributed() else 1


def is_main_process():
    return get_rank() == 0


def init_distributed(device_arg='auto', timeout_s=600):
    """Starts the process group when launched by torchrun (WORLD_SIZE > 1) and picks this rank's device.
    nccl on GPUs, gloo on CPU. A dead peer makes collectives fail after timeout_s instead of hanging."""
    world_size = int(os.environ.get('WORLD_SIZE', '1'))
    if device_arg == 'auto':
        device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(device_arg)
    if world_size > 1 and not is_distributed():
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        backend = 'nccl' if device.type == 'cuda' else 'gloo'
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Munch(device=device, rank=get_rank(), world_size=get_world_size())


def all_reduce_mean_grads(params):
    """Averages the gradients of params across ranks, in one flat buffer (one collective per optimiser step)."""
    if not is_distributed():
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= get_world_size()
    torch._foreach_copy_(grads, [t.view_as(g) for t, g in zip(flat.split([g.numel() for g in grads]), grads)])


def barrier():
    if is_distributed():
        dist.barrier()


def broadcast_module(module, src=0):
    """Makes every rank start from rank src's parameters and buffers."""
    if not is_distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src)


def cleanup():
    if is_distributed():
        dist.destroy_process_group()
