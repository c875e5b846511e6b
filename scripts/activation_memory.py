#!/usr/bin/env python
"""The memory of one training iteration per --micro_batch size, counted without arithmetic (core/machinery/memory.py): the
activations autograd saves in each phase, the gradients of the phase's networks, and the weights, EMA copies, FAN and
Adam state, with the peak predicted from them (times core.machinery.memory.MARGIN) and the cards it fits.

    python scripts/activation_memory.py --preset afhq --micro_batches 1,2,4,8           # ~10 s per size on 2 cores
    python scripts/activation_memory.py --preset celeba_hq --json memory_celeba_hq.json  # random FAN if none given
    # another version's training step, counted the same way (the one measured on a GPU, docs/memory.md)
    git archive e54c351 | (mkdir -p /tmp/e54c351 && tar -x -C /tmp/e54c351)
    python scripts/activation_memory.py --preset afhq --micro_batches 8 --solver_from /tmp/e54c351

Every flag of main.py passes through (--preset, --img_size, --batch_size, --amp, ...); --batch_size is the batch per
process. docs/memory.md holds the table for the paper's two settings and what is counted and what measured.
SavedTensorCounter (core/machinery/memory.py) is importable from here too, as before.
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_memory():
    """core/machinery/memory.py of this checkout by its path, so that --solver_from can put another checkout's `core` first
    (the count runs the step of the Solver it is given)."""
    spec = importlib.util.spec_from_file_location('stargan_memory', os.path.join(REPO, 'core', 'machinery', 'memory.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_memory = _load_memory()
MARGIN, PHASES, SavedTensorCounter = _memory.MARGIN, _memory.PHASES, _memory.SavedTensorCounter

GIB = 2 ** 30
# a card's nominal size in GB, and what a training process can allocate on it when nothing else runs: the CUDA
# context with cuDNN and cuBLAS loaded holds 0.3-0.6 GiB, and cards show a little less than the nominal GiB
CARDS_GB = (8, 12, 16, 24)
CONTEXT_GIB = 0.75


def usable_gib(card_gb):
    return card_gb - CONTEXT_GIB


def report(counted):
    """One row of numbers (GiB) for a count."""
    s = counted.state
    largest = max(counted.phases, key=lambda p: p.activations + p.grads)
    peak = counted.total * MARGIN / GIB
    return dict(micro_batch=counted.micro_batch, batch=counted.local_batch,
                activations_gib={p.name: round(p.activations / GIB, 3) for p in counted.phases},
                largest_phase=largest.name, largest_phase_grads_gib=round(largest.grads / GIB, 3),
                weights_gib=round(s.weights / GIB, 3), ema_gib=round(s.ema / GIB, 3), fan_gib=round(s.fan / GIB, 3),
                adam_gib=round(s.adam / GIB, 3), inputs_gib=round(counted.inputs / GIB, 3),
                counted_gib=round(counted.total / GIB, 3), predicted_peak_gib=round(peak, 2),
                fits_gb=[c for c in CARDS_GB if peak <= usable_gib(c)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], allow_abbrev=False)
    p.add_argument('--micro_batches', type=str, default='1,2,4,8', help='Chunk sizes to count, comma-separated')
    p.add_argument('--json', type=str, default=None)
    p.add_argument('--solver_from', type=str, default=None,
                   help='Count the training step of another checkout of this project (a folder holding core/): run '
                        'in a fresh process, its core is imported instead of this one\'s')
    bargs, rest = p.parse_known_args(argv)
    if not any(a == '--mode' or a.startswith('--mode=') for a in rest):
        rest = ['--mode', 'train'] + rest
    code = os.path.abspath(bargs.solver_from) if bargs.solver_from else REPO
    if bargs.solver_from:
        if not os.path.isfile(os.path.join(code, 'core', 'solver.py')):
            raise SystemExit(f'--solver_from {bargs.solver_from}: no core/solver.py there')
        loaded = sys.modules.get('core')
        if loaded is not None and os.path.dirname(os.path.dirname(os.path.abspath(loaded.__file__))) != code:
            raise SystemExit('--solver_from: this process has imported another core already; run the script alone')
    sys.path.insert(0, code)
    from core.config import parse_args
    from core.solver import Solver  # the step counted: this checkout's, or --solver_from's
    args = parse_args(rest)
    sizes = [int(n) for n in bargs.micro_batches.split(',') if n.strip()]

    sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
    from benchlib.workload import ensure_wing  # this checkout's: a random FAN when wing.ckpt is absent
    # core.machinery.distributed.resolve_device's rule, here because older checkouts lack it
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device in (None, 'auto')
                          else args.device)
    workdir = tempfile.mkdtemp(prefix='stargan_mem_')
    rows = []
    try:
        args.checkpoint_dir = os.path.join(workdir, 'checkpoints')
        ensure_wing(args, workdir, [])
        for n in sizes:
            t0 = time.perf_counter()
            rows.append(report(_memory.count_training_memory(args, n, args.batch_size, device, solver_cls=Solver)))
            rows[-1]['count_s'] = round(time.perf_counter() - t0, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{args.preset or 'custom'} setting, {args.img_size} px, batch {args.batch_size} per process, w_hpf "
          f"{args.w_hpf}, amp {args.amp}, counted for {device.type}; predicted peak = counted x {MARGIN}; a card "
          f"fits when the peak is within its size - {CONTEXT_GIB} GiB", file=sys.stderr)
    head = ''.join(f'{h:>12}' for h in ('act. ' + ph.split()[0][0] + ph.split()[1][:3] for ph in PHASES))
    print(f"{'chunk':>6}{head}{'grads':>8}{'state':>8}{'counted':>9}{'peak':>7}  fits (GB)", file=sys.stderr)
    for r in rows:
        state = r['weights_gib'] + r['ema_gib'] + r['fan_gib'] + r['adam_gib'] + r['inputs_gib']
        acts = ''.join(f'{v:>12.2f}' for v in r['activations_gib'].values())
        print(f"{r['micro_batch']:>6}{acts}{r['largest_phase_grads_gib']:>8.2f}{state:>8.2f}{r['counted_gib']:>9.2f}"
              f"{r['predicted_peak_gib']:>7.2f}  {','.join(map(str, r['fits_gb'])) or '-'}", file=sys.stderr)
    out = dict(config=dict(preset=args.preset, img_size=args.img_size, batch_size=args.batch_size, w_hpf=args.w_hpf,
                           amp=args.amp, device=device.type, torch=torch.__version__, solver_from=code),
               margin=MARGIN, context_gib=CONTEXT_GIB, rows=rows)
    if bargs.json:
        tmp = bargs.json + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, bargs.json)
    print(json.dumps(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
