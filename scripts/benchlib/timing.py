"""One timing loop for the benchmarks: CUDA events between iterations on a GPU (no extra host sync inside the loop,
so the host may run ahead as in training), perf_counter on a CPU; the wall time of the whole loop gives the mean."""
import gc
import time

import torch
from munch import Munch


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def free_memory(device):
    gc.collect()
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    try:
        torch._dynamo.reset()
    except Exception:
        pass



def time_loop(step, iters, device, min_iters=3, over_budget=lambda: False):
    """Runs step() up to iters times. After min_iters, stops early when over_budget() says so. Returns Munch(n,
    per_iter_s (each iteration's seconds), wall_s (synchronised wall time of the loop), truncated, last (the last
    result of step()))."""
    cuda = device.type == 'cuda'

    def mark():
        if not cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    sync(device)
    t0 = time.perf_counter()
    marks, last = [mark()], None
    for i in range(iters):
        last = step()
        marks.append(mark())
        if i + 1 >= min(min_iters, iters) and over_budget():
            break
    sync(device)
    wall = time.perf_counter() - t0
    per_iter = [(a.elapsed_time(b) / 1e3 if cuda else b - a) for a, b in zip(marks, marks[1:])]
    return Munch(n=len(per_iter), per_iter_s=per_iter, wall_s=wall, truncated=len(per_iter) < iters, last=last)
