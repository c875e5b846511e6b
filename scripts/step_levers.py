#!/usr/bin/env python
"""Ratios of training-step times, measured side by side: one Solver per mode in one process, their iterations
interleaved (round r runs one iteration of every mode, the order rotated each round), so that a machine whose speed
drifts (other jobs on shared cores) slows every mode alike. Prints one JSON object on stdout: per mode the median
seconds per iteration and the median, min and max over rounds of its time divided by the first mode's.

    python scripts/step_levers.py --preset demo --device cpu --threads 1 \\
        --modes adam_loop,adam_foreach,adam_fused,adam_fused+threads=2 --rounds 40

A mode is a name of scripts/benchmark.py's MODES, optionally followed by +flag=value overrides of core/config.py's
flags (+optim_impl=fused), or +threads=N (torch.set_num_threads around that mode's iterations). Fixed synthetic
batches (compute only; the data path is timed by --data). Absolute times from a shared machine mean little; the
ratios are the measurement.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from munch import Munch  # noqa: E402

from benchmark import MODES  # noqa: E402
from benchlib.workload import new_solver, synthetic_inputs  # noqa: E402
from core.config import parse_args  # noqa: E402
from core.losses import moving_average  # noqa: E402


@torch.no_grad()
def moving_average_loop(model, model_test, beta):
    for param, param_test in zip(model.parameters(), model_test.parameters()):
        param_test.copy_(torch.lerp(param, param_test, beta))


def update_only(solver, margs):
    """The optimiser steps of one iteration (D twice, G twice, F and E once) and the EMA, on fixed gradients."""
    for name in ('discriminator', 'discriminator', 'generator', 'mapping_network', 'style_encoder', 'generator'):
        solver.optims[name].step()
    ema = moving_average_loop if margs.get('ema_loop') else moving_average
    for name in ('generator', 'mapping_network', 'style_encoder'):
        ema(solver.nets[name], solver.nets_ema[name], margs.ema_beta)
from core.machinery.distributed import resolve_device  # noqa: E402


def parse_mode(spec, args, threads):
    name, *overrides = spec.split('+')
    if name not in MODES:
        raise SystemExit(f'unknown mode {name!r}: choose from {", ".join(MODES)}')
    margs, n_threads = Munch(args, **MODES[name]), threads
    for item in overrides:
        key, _, value = item.partition('=')
        if key == 'threads':
            n_threads = int(value)
        elif key == 'ema':  # loop: the reference's per-parameter lerp (only here: the Solver's is one foreach call)
            margs['ema_loop'] = value == 'loop'
        elif key in margs:
            old = margs[key]
            margs[key] = type(old)(value) if old is not None and not isinstance(old, bool) else value
        else:
            raise SystemExit(f'{spec}: no flag {key!r}')
    return margs, n_threads


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], allow_abbrev=False)
    p.add_argument('--modes', required=True, help='comma-separated; the first is the yardstick of the ratios')
    p.add_argument('--rounds', type=int, default=30)
    p.add_argument('--warmup', type=int, default=3, help='untimed iterations of each mode before the rounds')
    p.add_argument('--threads', type=int, default=1, help='torch.set_num_threads of the modes without +threads')
    p.add_argument('--with_fetch', action='store_true',
                   help='Also time drawing a batch from the training loaders on --train_img_dir (InputFetcher, '
                        '--num_workers, the decoding and augmentation of the files) in each round: its ratio to the '
                        'first mode\'s step')
    p.add_argument('--part', choices=['step', 'update'], default='step',
                   help='step: Solver.train_step; update: its optimiser steps and EMA alone (fixed random gradients)')
    largs, rest = p.parse_known_args(argv)
    args = parse_args(['--mode', 'train'] + rest)
    device = resolve_device(args.device)
    torch.set_num_threads(largs.threads)
    args.checkpoint_dir = os.path.join('/tmp', f'step_levers_{os.getpid()}')
    inputs = synthetic_inputs(args, device, args.seed)

    modes = []
    for spec in largs.modes.split(','):
        margs, n_threads = parse_mode(spec, args, largs.threads)
        torch.set_num_threads(n_threads)
        t = time.perf_counter()
        solver = new_solver(margs, device, margs.skip_unused_grads)
        step = 0
        if largs.part == 'update':
            g = torch.Generator().manual_seed(args.seed)
            for p in solver.parameters():
                p.grad = torch.randn(p.shape, generator=g).to(p) * 1e-3
            run = (lambda s, m=margs: update_only(s, m))  # noqa: E731
        else:
            run = (lambda s: s.train_step(inputs, s.bench_step))  # noqa: E731
        solver.bench_step = 0
        for _ in range(largs.warmup):
            run(solver)
            solver.bench_step += 1
        modes.append(Munch(spec=spec, solver=solver, threads=n_threads, run=run, times=[], cpu=[],
                           setup_s=time.perf_counter() - t))
        print(f'{spec}: built and warmed up in {modes[-1].setup_s:.1f} s', file=sys.stderr, flush=True)

    fetcher, fetch_wall, fetch_cpu = None, [], []
    if largs.with_fetch:
        from benchlib.workload import build_loaders
        from core.data_loader import InputFetcher
        loaders = build_loaders(args, device)
        fetcher = InputFetcher(loaders.src, loaders.ref, args.latent_dim, 'train', device)
        for _ in range(largs.warmup):
            next(fetcher)

    for r in range(largs.rounds):
        if fetcher is not None:
            torch.set_num_threads(largs.threads)
            t, c = time.perf_counter(), time.process_time()
            next(fetcher)
            fetch_wall.append(time.perf_counter() - t)
            fetch_cpu.append(time.process_time() - c)
        k = r % len(modes)
        for m in modes[k:] + modes[:k]:
            torch.set_num_threads(m.threads)
            t, c = time.perf_counter(), time.process_time()
            m.run(m.solver)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
            m.times.append(time.perf_counter() - t)
            m.cpu.append(time.process_time() - c)
            m.solver.bench_step += 1
        if (r + 1) % 10 == 0:
            print(f'round {r + 1}/{largs.rounds}: ' + ', '.join(f'{m.spec} {statistics.median(m.times):.3f}'
                                                                  for m in modes), file=sys.stderr, flush=True)

    report = dict(argv=sys.argv[1:] if argv is None else argv, part=largs.part, rounds=largs.rounds,
                  warmup=largs.warmup, torch=torch.__version__, cpu_count=os.cpu_count(), results=[])
    for m in modes:
        res = dict(mode=m.spec, threads=m.threads, setup_s=round(m.setup_s, 2))
        # wall: what a run waits; cpu (the process's CPU seconds): less moved by other jobs on the cores, but blind to
        # what a second thread gains
        for kind in ('wall', 'cpu'):
            mine, base = m.times if kind == 'wall' else m.cpu, modes[0].times if kind == 'wall' else modes[0].cpu
            ratios = sorted(a / b for a, b in zip(mine, base))
            q = lambda f: ratios[min(len(ratios) - 1, int(f * len(ratios)))]  # noqa: E731
            res[kind] = dict(s_median=statistics.median(mine), ratio_median=statistics.median(ratios),
                             ratio_q25=q(0.25), ratio_q75=q(0.75))
            print(f'{m.spec:32s} {kind}: {statistics.median(mine):.4f} s  x{statistics.median(ratios):.3f} '
                  f'(quartiles {q(0.25):.3f}-{q(0.75):.3f}) of {modes[0].spec}', file=sys.stderr)
        report['results'].append(res)
    if fetcher is not None:
        report['fetch'] = {kind: dict(s_median=statistics.median(f), ratio_to_step_median=statistics.median(
            a / b for a, b in zip(f, modes[0].times if kind == 'wall' else modes[0].cpu)))
            for kind, f in (('wall', fetch_wall), ('cpu', fetch_cpu))}
        print(f'fetch (batch {args.batch_size}, {args.num_workers} workers): ' + ', '.join(
            f'{k} {v["s_median"]:.4f} s, x{v["ratio_to_step_median"]:.3f} of {modes[0].spec}\'s step'
            for k, v in report['fetch'].items()), file=sys.stderr)
    print(json.dumps(report))


if __name__ == '__main__':
    main()
