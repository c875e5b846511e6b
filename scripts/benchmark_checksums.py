"""What the checkpoint checksums (core/machinery/integrity.py) cost at the paper's size: one save of a CelebA-HQ run's three
files (256 px, w_hpf 1, 2 domains: G, F, E, D, their EMA copies, Adam states) with the checksums and without them,
the verification of a resume, and hashlib's speeds on the largest file in memory.

    PYTHONPATH=. python scripts/benchmark_checksums.py --dir /tmp/ckpt_bench    # ~1.3 GB written there, twice

Prints one JSON object. The networks have random weights (the cost depends on the bytes only); no FAN is built
(--hpf_masks ones: the same generator).
"""
import argparse
import hashlib
import json
import os
import shutil
import sys
import time

import torch
from munch import Munch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from core.checkpoint import RunCheckpoint, atomic_write  # noqa: E402
from core.config import parse_args  # noqa: E402
from core.machinery import integrity  # noqa: E402
from core.model import build_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--dir', default='/tmp/ckpt_bench')
    p.add_argument('--repeat', type=int, default=2)
    opt = p.parse_args()
    torch.set_num_threads(1)
    args = parse_args(['--mode', 'train', '--preset', 'celeba_hq', '--hpf_masks', 'ones', '--device', 'cpu'])
    torch.manual_seed(0)
    nets, ema = build_model(args)
    optims = Munch({k: torch.optim.Adam(nets[k].parameters(), lr=1e-4) for k in nets if k != 'fan'})
    for k, opt_k in optims.items():  # Adam's moments exist after a first step
        for q in nets[k].parameters():
            q.grad = torch.zeros_like(q)
        opt_k.step()
    os.makedirs(opt.dir, exist_ok=True)
    run = RunCheckpoint(opt.dir, nets, ema, optims)
    out = dict(save_with_checksums_s=[], save_plain_s=[], verify_s=[])
    for _ in range(opt.repeat):
        t = time.perf_counter()
        run.save(1, lambda_ds=1.0, world_size=1)
        out['save_with_checksums_s'].append(round(time.perf_counter() - t, 2))
        t = time.perf_counter()
        for c in run.ckptios:  # the save of before: atomic, no hash, no state file
            atomic_write(c.fname(2), lambda f: torch.save(c.outdict(), f))
        out['save_plain_s'].append(round(time.perf_counter() - t, 2))
    for _ in range(opt.repeat + 1):
        integrity._hashed.clear()  # as a fresh process: every file read and hashed (from the page cache)
        t = time.perf_counter()
        assert integrity.check_step(opt.dir, 1) is None
        out['verify_s'].append(round(time.perf_counter() - t, 2))
    sizes = {k: os.path.getsize(integrity.net_path(opt.dir, 1, k)) for k in integrity.NET_FILES}
    out['file_MB'] = {k: round(v / 1e6, 1) for k, v in sizes.items()}
    out['total_MB'] = round(sum(sizes.values()) / 1e6, 1)
    with open(integrity.net_path(opt.dir, 1, 'optims'), 'rb') as f:
        data = f.read()
    for name in ('sha256', 'sha1', 'blake2b', 'md5'):
        t = time.perf_counter()
        hashlib.new(name, data).hexdigest()
        out[f'{name}_MB_per_s'] = round(len(data) / (time.perf_counter() - t) / 1e6)
    shutil.rmtree(opt.dir)
    print(json.dumps(out, indent=1))


if __name__ == '__main__':
    main()
