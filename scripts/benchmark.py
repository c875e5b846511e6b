#!/usr/bin/env python
"""Training speed of this StarGAN v2: times Solver.train_step (one full iteration: D latent, D reference, G latent,
G reference, EMA) and prints ONE JSON object on stdout (everything else goes to stderr).

    # compute only (fixed random batches already on the device), the paper's settings
    python scripts/benchmark.py --preset celeba_hq --loader synthetic --compare --modes eager,compile,bf16
    python scripts/benchmark.py --preset afhq --loader synthetic --iters 100
    # end to end: the real loaders (decode, augment, collate, host->device copy) on generated 1024-px JPEGs
    python scripts/benchmark.py --preset celeba_hq --loader real --make_images 100
    # where the time goes
    python scripts/benchmark.py --preset afhq --profile --trace trace.json
    # tiny, on a CPU
    python scripts/benchmark.py --img_size 32 --base_dim 8 --max_conv_dim 16 --hidden_dim 16 --w_hpf 0 \\
        --iters 3 --warmup 1 --device cpu --loader synthetic

Every flag of main.py (core/config.py) passes through (--preset, --img_size, --batch_size, --w_hpf, --compile,
--amp bf16, --num_workers, --device, ...); --mode train is implied. The benchmark's own flags are listed by --help.

Timing: warm-up iterations (compilation, cudnn autotuning, loader start-up) are excluded. On CUDA the timed region is
bracketed by torch.cuda.synchronize(); per-iteration times come from CUDA events recorded between iterations (no
extra host sync inside the loop, so the host may run ahead as in training), the mean is wall time / iterations.
TFLOP/s = FLOPs of one iteration (torch.utils.flop_counter.FlopCounterMode, eager, same device: convolutions and
matmuls, forward and backward including R1's double backward and the FAN) / mean s per iteration.

Modes (--compare --modes a,b,...): reference_work (eager, and also the weight gradients the reference computes and
throws away in the G steps), eager (the default training path), compile (torch.compile of G, F, E, D with R1, FAN),
compile_cudagraphs (the same, mode reduce-overhead), compile_autotune (max-autotune-no-cudagraphs), bf16 and
compile_bf16 (autocast; opt-in, changes numerics), adam_loop, adam_foreach and adam_fused (eager with that
--optim_impl, contiguous), reference_step (per-parameter Adam, contiguous: the reference's step whatever the preset),
channels_last (the same in --memory_format channels_last). scripts/step_levers.py times modes interleaved in one process (ratios on a shared machine).

--compare runs several modes one after the other in this process, each from freshly built networks with the same
seed, and a numerics check: the first iteration of every mode runs on the same fixed batch from the same initial
weights, and the parameters after it are compared with those of the eager fp32 baseline. Two reference rows calibrate
the numbers: `eager_repeat` (eager again: run-to-run nondeterminism, e.g. cudnn algorithm choice and atomics) and,
on CUDA, `eager_no_tf32` (eager with cudnn TF32 off, i.e. full fp32 convolutions: the size of TF32 rounding).
PyTorch's TF32 defaults are left alone (cudnn TF32 on for convolutions, matmul TF32 off) and reported.

Robustness: a mode that fails (a torch.compile error, out of memory) reports its error in the JSON and the next mode
runs; --time_budget_s (counted from the start of the script) skips the modes that would start too late and cuts a
running timed loop short, saying so; the --json file is rewritten after every mode, so a run killed by an outer
`timeout` still leaves the modes it finished.
"""
import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback

T_START = time.perf_counter()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from munch import Munch  # noqa: E402

from benchlib.flops import count_flops  # noqa: E402
from benchlib.report import fmt, log, print_table, profile_table, stdout_view, write_json  # noqa: E402
from benchlib.numerics import DEFINITIONS, compare_numerics, first_iteration, numerics_only  # noqa: E402
from benchlib.timing import free_memory, sync, time_loop  # noqa: E402
from benchlib.workload import (build_loaders, dynamo_stats, ensure_wing, env_info, make_images,  # noqa: E402
                               model_config, new_solver, synthetic_inputs, tf32_flags)
from core.config import parse_args  # noqa: E402
from core.machinery.distributed import resolve_device  # noqa: E402

MODES = {  # name -> the settings it changes (the rest are the command line's)
    # the reference's work: also the weight gradients of D (and E) in the G steps, which it throws away
    'reference_work': dict(compile=False, amp='none', skip_unused_grads=False),
    'eager': dict(compile=False, amp='none', skip_unused_grads=True),  # this project's default
    'compile': dict(compile=True, amp='none', compile_mode='default', skip_unused_grads=True),
    'compile_cudagraphs': dict(compile=True, amp='none', compile_mode='reduce-overhead', skip_unused_grads=True),
    'compile_autotune': dict(compile=True, amp='none', compile_mode='max-autotune-no-cudagraphs',
                             skip_unused_grads=True),
    # Adam's implementations (--optim_impl), in the reference's layout; eager otherwise
    'adam_loop': dict(compile=False, amp='none', skip_unused_grads=True, optim_impl='loop', memory_format='contiguous'),
    'adam_foreach': dict(compile=False, amp='none', skip_unused_grads=True, optim_impl='foreach', memory_format='contiguous'),
    'adam_fused': dict(compile=False, amp='none', skip_unused_grads=True, optim_impl='fused', memory_format='contiguous'),
    # the reference's step (per-parameter Adam, contiguous) and its layout alone (--memory_format)
    'reference_step': dict(compile=False, amp='none', skip_unused_grads=True, optim_impl='auto',
                           memory_format='contiguous'),
    'channels_last': dict(compile=False, amp='none', skip_unused_grads=True, optim_impl='auto',
                          memory_format='channels_last'),
    'bf16': dict(compile=False, amp='bf16', skip_unused_grads=True),
    'compile_bf16': dict(compile=True, amp='bf16', compile_mode='default', skip_unused_grads=True),
}
ALIASES = {'amp': 'bf16', 'compile_amp': 'compile_bf16', 'fp32': 'eager', 'baseline': 'eager'}


# ------------------------------------------------------------------------------------------------------ arguments

def bench_parser():
    p = argparse.ArgumentParser(
        description='Times StarGAN v2 training iterations (Solver.train_step). Every flag of main.py also works '
                    '(--preset, --img_size, --batch_size, --w_hpf, --compile, --amp, --device, --num_workers, ...).',
        allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--iters', type=int, default=100, help='Timed iterations (per mode)')
    p.add_argument('--warmup', type=int, default=10, help='Untimed warm-up iterations (per mode)')
    p.add_argument('--loader', choices=['synthetic', 'real'], default='synthetic',
                   help='synthetic: fixed random batches already on the device (compute only); real: the training '
                        'loaders and InputFetcher on --train_img_dir or on --make_images (end to end)')
    p.add_argument('--make_images', type=int, default=0,
                   help='With --loader real: generate this many random JPEGs per domain in a temp folder, train on it')
    p.add_argument('--image_res', type=int, default=0,
                   help='Side of the generated JPEGs (0: 512 for --preset afhq, else 1024, like the datasets)')
    p.add_argument('--json', type=str, default=None, help='Also write the JSON result here (rewritten after each mode)')
    p.add_argument('--compare', action='store_true',
                   help='Run --modes one after the other (fresh networks, same seed) plus the numerics check')
    p.add_argument('--modes', type=str, default='reference_work,eager,compile,bf16',
                   help='Modes for --compare, from: ' + ', '.join(MODES) + ' (amp = bf16)')
    p.add_argument('--no_numerics', action='store_true', help='--compare without the numerics check')
    p.add_argument('--flops_per_iter', type=float, default=None,
                   help='Skip the FLOP count (it takes ~20-40 s on an H100) and use this value, e.g. 2.29e13 '
                        '(celeba_hq) or 2.33e13 (afhq) at 256 px, batch 8')
    p.add_argument('--profile', action='store_true',
                   help='After timing, run torch.profiler for --profile_iters iterations; print the top 25 ops')
    p.add_argument('--profile_iters', type=int, default=3)
    p.add_argument('--trace', type=str, default=None,
                   help='With --profile: write a chrome trace here (with --compare: one per mode, FILE.<mode>.json); '
                        'a name ending in .gz is gzipped (a CUDA trace of a few iterations is tens of MB)')
    p.add_argument('--time_budget_s', type=float, default=400,
                   help='After this many seconds since start, remaining modes are skipped and a running timed loop '
                        'stops early (at least 3 iterations are timed); the result says so')
    p.add_argument('--threads', type=int, default=0, help='torch.set_num_threads (0: leave PyTorch\'s default)')
    p.add_argument('--min_mode_s', type=float, default=20,
                   help='Do not start a mode with less than this much of the time budget left')
    p.add_argument('--min_compile_mode_s', type=float, default=90,
                   help='The same for the torch.compile modes (compilation alone takes a minute or more, and cannot '
                        'be cut short)')
    return p


def parse_all(argv):
    bp = bench_parser()
    if any(a in ('-h', '--help') for a in argv):
        bp.print_help()
        print('\nModel/training flags (passed to core.config.parse_args; --mode train is implied):')
        from core.config import get_parser
        get_parser().print_help()
        sys.exit(0)
    bargs, rest = bp.parse_known_args(argv)
    if not any(a == '--mode' or a.startswith('--mode=') for a in rest):
        rest = ['--mode', 'train'] + rest
    args = parse_args(rest)
    if args.mode != 'train':
        raise SystemExit('benchmark.py times training: --mode must be train')
    modes = []
    for m in bargs.modes.split(','):
        m = ALIASES.get(m.strip(), m.strip())
        if not m:
            continue
        if m not in MODES:
            raise SystemExit(f'--modes: unknown mode {m!r}; choose from {", ".join(MODES)}')
        if m not in modes:
            modes.append(m)
    bargs.modes = modes
    if bargs.iters < 1 or bargs.warmup < 0:
        raise SystemExit('--iters must be >= 1 and --warmup >= 0')
    if bargs.make_images and bargs.loader != 'real':
        raise SystemExit('--make_images needs --loader real')
    return bargs, args


# ------------------------------------------------------------------------------------------------------ helpers

def elapsed():
    return time.perf_counter() - T_START


# ------------------------------------------------------------------------------------------------------ one mode

def run_mode(name, args, bargs, device, fixed_inputs, loaders, numerics, profile_trace=None):
    """Builds fresh networks (seeded), optionally runs the numerics iteration (fixed batch, initial weights), warms
    up, times. Returns a dict; raises on failure (the caller records the error)."""
    res = dict(mode=name, compile=bool(args.compile), amp=args.amp, status='running',
               compile_mode=args.compile_mode if args.compile else None, skip_unused_grads=args.skip_unused_grads)
    t_build = time.perf_counter()
    if args.compile:
        try:
            from torch._dynamo.utils import counters
            counters.clear()  # dynamo_stats() then describes this mode only
        except Exception:
            pass
    solver = new_solver(args, device, args.skip_unused_grads)
    try:
        res['build_s'] = round(time.perf_counter() - t_build, 2)
        res['tf32'] = tf32_flags()
        if loaders is not None:
            from core.data_loader import InputFetcher
            fetcher = InputFetcher(loaders.src, loaders.ref, args.latent_dim, 'train', device)
            fetch = lambda: next(fetcher)  # noqa: E731
        else:
            fetch = lambda: fixed_inputs  # noqa: E731
        step = [0]

        def one_iteration():
            terms = solver.train_step(fetch(), step[0])
            step[0] += 1
            return terms

        numerics_state = None
        if numerics:  # the first iteration: fixed batch, initial weights (compilation happens here too)
            t = time.perf_counter()
            numerics_state = first_iteration(solver, fixed_inputs)
            res['first_iter_s'] = round(time.perf_counter() - t, 3)
            step[0] = 1

        over_budget = lambda: elapsed() > bargs.time_budget_s  # noqa: E731
        warm = time_loop(one_iteration, bargs.warmup, device, min_iters=1, over_budget=over_budget)
        if warm.n and not numerics:
            res['first_iter_s'] = round(warm.per_iter_s[0], 3)
        if warm.truncated:
            res.setdefault('notes', []).append(f'warm-up cut to {warm.n} iterations by --time_budget_s')
        if args.compile:
            res['dynamo'] = dynamo_stats()
        res.update(warmup_iters=warm.n, warmup_s=round(warm.wall_s, 2))
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)

        timed = time_loop(one_iteration, bargs.iters, device, min_iters=3, over_budget=over_budget)
        n, per_iter, mean = timed.n, timed.per_iter_s, timed.wall_s / timed.n
        res.update(status='ok', iters_timed=n, truncated_by_budget=timed.truncated, wall_s=round(timed.wall_s, 3),
                   s_per_iter=mean, s_per_iter_mean=mean, s_per_iter_median=statistics.median(per_iter),
                   s_per_iter_min=min(per_iter), s_per_iter_max=max(per_iter), it_per_s=1.0 / mean,
                   est_hours_per_100k_iters=round(mean * 1e5 / 3600, 2),
                   loss_terms_finite=bool(torch.isfinite(timed.last).all()), per_iter_s=[round(x, 6) for x in per_iter])
        if timed.truncated:
            res.setdefault('notes', []).append(f'timed loop stopped after {n} of {bargs.iters} iterations by '
                                               f'--time_budget_s {bargs.time_budget_s}')
        res['peak_mem_gib'] = None
        if device.type == 'cuda':
            res['peak_mem_gib'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
            res['peak_reserved_gib'] = round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 3)
        if bargs.profile:
            res['profile'] = profile_iterations(one_iteration, bargs, device, profile_trace, name)
        return res, numerics_state
    finally:
        solver = None  # noqa: F841 (freed before the next mode builds its own)
        free_memory(device)


def profile_iterations(one_iteration, bargs, device, trace, name):
    """torch.profiler over --profile_iters iterations: the top ops, and a chrome trace if asked."""
    if elapsed() > bargs.time_budget_s:
        return dict(skipped='time budget spent')
    try:
        from torch.profiler import ProfilerActivity, profile
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
        sync(device)
        with profile(activities=acts) as prof:
            for _ in range(bargs.profile_iters):
                one_iteration()
            sync(device)
        return dict(iters=bargs.profile_iters, **profile_table(prof, device, trace, name))
    except Exception as e:
        log(traceback.format_exc())
        return dict(error=f'{type(e).__name__}: {e}')


# ------------------------------------------------------------------------------------------------------ main

def main(argv=None, redirect_stdout=True, start_time=None):
    """Returns the exit code. redirect_stdout: send everything but the JSON to stderr (file descriptor 1 included,
    for compilers' output). start_time: the perf_counter origin of --time_budget_s (default: this module's import)."""
    global T_START
    if start_time is not None:
        T_START = start_time
    argv = sys.argv[1:] if argv is None else list(argv)
    bargs, args = parse_all(argv)
    if bargs.threads > 0:
        torch.set_num_threads(bargs.threads)
    if redirect_stdout:  # stdout carries only the JSON: what the project, torch or compilers print goes to stderr
        sys.stdout.flush()
        json_out = os.fdopen(os.dup(1), 'w')
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    else:
        json_out = sys.stdout

    device = resolve_device(args.device)
    if device.type == 'cuda':
        if device.index is None:  # torch.cuda.set_device needs an index
            device = torch.device('cuda', torch.cuda.current_device())
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True  # as main.py does for training
    notes = []
    workdir = tempfile.mkdtemp(prefix='stargan_bench_')
    args.checkpoint_dir = os.path.join(workdir, 'checkpoints')  # the Solver creates it; nothing is saved
    args.sample_dir = os.path.join(workdir, 'samples')
    report = dict(benchmark='StarGAN v2 Solver.train_step', argv=argv,
                  flags=dict(vars(bargs)), config=None, env=env_info(device), tf32_at_start=tf32_flags(),
                  definitions=DEFINITIONS, notes=notes, results=[])
    report['flags']['modes'] = bargs.modes if bargs.compare else None
    exit_code = 0
    try:
        if bargs.loader == 'real' and bargs.make_images:
            res = bargs.image_res or (512 if args.preset == 'afhq' else 1024)
            root = os.path.join(workdir, 'train')
            log(f'generating {bargs.make_images} JPEGs per domain at {res} px in {root} ...')
            report['images'] = make_images(root, args.num_domains, bargs.make_images, res, args.seed)
            args.train_img_dir = root
            log(f"  done in {report['images']['seconds']} s, {report['images']['mean_kib']} KiB per image")
        report['wing'] = ensure_wing(args, workdir, notes)
        report['config'] = model_config(args)
        log('config:', json.dumps(report['config']))

        loaders = None
        if bargs.loader == 'real':
            loaders = build_loaders(args, device)
            report['loader'] = dict(train_img_dir=args.train_img_dir, num_workers=args.num_workers,
                                    domains=list(loaders.src.domains), images=len(loaders.src.dataset),
                                    setup_s=loaders.setup_s, pin_memory=device.type == 'cuda')
        fixed_inputs = synthetic_inputs(args, device, args.seed)

        # FLOPs of one iteration (eager; the same for every mode)
        if bargs.flops_per_iter:
            report.update(flops_per_iter=bargs.flops_per_iter, flops_source='--flops_per_iter')
        else:
            try:
                t = time.perf_counter()
                flops, by_op, params = count_flops(args, device, fixed_inputs)
                report.update(flops_per_iter=flops, flops_by_op=by_op, params=params,
                              flops_count_s=round(time.perf_counter() - t, 2))
                log(f'FLOPs per iteration: {flops:.4g} ({report["flops_count_s"]} s to count)')
            except Exception as e:
                report.update(flops_per_iter=None, flops_error=f'{type(e).__name__}: {e}')
                log(traceback.format_exc())
                free_memory(device)

        if bargs.compare:
            modes = [(m, Munch(args, **MODES[m])) for m in bargs.modes]
        else:
            args.skip_unused_grads = True
            label = next((k for k, v in MODES.items() if all(args[f] == x for f, x in v.items())), 'custom')
            modes = [(label, args)]
        numerics = bargs.compare and not bargs.no_numerics
        states, report['numerics'] = {}, ({} if numerics else None)

        def add_numerics(name, state):
            if 'eager' in states and name != 'eager':
                report['numerics'][name] = compare_numerics(states['eager'], state)

        if numerics and 'eager' not in bargs.modes:  # a baseline is needed
            try:
                states['eager'] = numerics_only(Munch(args, compile=False, amp='none'), device, fixed_inputs)
            except Exception as e:
                report['numerics']['error'] = f'eager baseline: {type(e).__name__}: {e}'

        for name, margs in modes:
            left = bargs.time_budget_s - elapsed()
            need, flag = ((bargs.min_compile_mode_s, '--min_compile_mode_s') if margs.compile
                          else (bargs.min_mode_s, '--min_mode_s'))
            if left < need:
                reason = (f'skipped: {left:.0f} s of --time_budget_s {bargs.time_budget_s:.0f} left '
                          f'(< {flag} {need:.0f})')
                report['results'].append(dict(mode=name, compile=bool(margs.compile), amp=margs.amp,
                                              status='skipped', reason=reason))
                notes.append(f'{name}: {reason}')
                log(f'== {name}: {reason}')
                continue
            log(f'== {name} (compile={bool(margs.compile)}, amp={margs.amp}) at {elapsed():.0f} s')
            trace = bargs.trace
            if trace and bargs.compare:  # one per mode: t.json -> t.eager.json, t.json.gz -> t.eager.json.gz
                base, gz = (trace[:-3], '.gz') if trace.endswith('.gz') else (trace, '')
                stem, ext = os.path.splitext(base)
                trace = f'{stem}.{name}{ext or ".json"}{gz}'
            try:
                res, state = run_mode(name, margs, bargs, device, fixed_inputs, loaders, numerics, trace)
                flops = report.get('flops_per_iter')
                if not margs.skip_unused_grads:  # more work than the default: its own count
                    flops = report.get('flops_per_iter_reference_work')
                    if flops is None and not bargs.flops_per_iter:
                        try:
                            flops = count_flops(margs, device, fixed_inputs, skip_unused_grads=False)[0]
                            report['flops_per_iter_reference_work'] = flops
                        except Exception as e:  # the timing stands without it
                            res.setdefault('notes', []).append(f'FLOP count failed: {type(e).__name__}: {e}')
                res['flops_per_iter'] = flops
                res['tflops'] = flops / res['s_per_iter'] / 1e12 if flops else None
                log(f"   {res['s_per_iter_median']:.4f} s/it median, {res['s_per_iter']:.4f} s/it mean, "
                    f"{res['it_per_s']:.2f} it/s, TFLOP/s {fmt(res['tflops'], '.2f')}, "
                    f"peak {fmt(res.get('peak_mem_gib'), '.2f')} GiB, first iteration {res.get('first_iter_s')} s")
                if state is not None:
                    states[name] = state
                    add_numerics(name, state)
                    if name == 'eager':  # the calibration rows, right after the baseline
                        for ref_name, kw in (('eager_repeat', {}), ('eager_no_tf32', dict(cudnn_tf32=False))):
                            if ref_name == 'eager_no_tf32' and device.type != 'cuda':
                                continue
                            try:
                                st = numerics_only(margs, device, fixed_inputs, **kw)
                                report['numerics'][ref_name] = compare_numerics(states['eager'], st)
                                del st
                            except Exception as e:
                                report['numerics'][ref_name] = dict(error=f'{type(e).__name__}: {e}')
                        for other, st in list(states.items()):  # modes run before eager (unusual order)
                            if other != 'eager' and other not in report['numerics']:
                                add_numerics(other, st)
                    if name != 'eager' and 'eager' in states:
                        states.pop(name, None)  # compared already: keep host memory small
            except Exception as e:
                res = dict(mode=name, compile=bool(margs.compile), amp=margs.amp, status='error',
                           error=f'{type(e).__name__}: {e}'[:2000], traceback=traceback.format_exc()[-4000:])
                log(f'   FAILED: {res["error"][:500]}')
                log(res['traceback'])
                free_memory(device)
            report['results'].append(res)
            write_json(report, bargs.json, complete=False, elapsed_s=elapsed())

        if not bargs.compare and report['results']:
            r = report['results'][0]
            report.update({k: v for k, v in r.items() if k not in ('mode', 'notes', 'per_iter_s')})
            report['mode'] = r['mode']
            if r['status'] != 'ok':
                exit_code = 1
        elif not any(r['status'] == 'ok' for r in report['results']):
            exit_code = 1
        if report['numerics'] and 'eager' in states:
            report['numerics']['baseline'] = 'eager (fp32, no compile, PyTorch default TF32 flags)'
        print_table(report)
    except SystemExit:
        raise
    except Exception as e:
        report['error'] = f'{type(e).__name__}: {e}'
        report['traceback'] = traceback.format_exc()[-4000:]
        log(report['traceback'])
        exit_code = 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report['tf32_at_end'] = tf32_flags()
    write_json(report, bargs.json, complete=True, elapsed_s=elapsed())
    json_out.write(json.dumps(stdout_view(report), default=str) + '\n')
    json_out.flush()
    return exit_code


if __name__ == '__main__':
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
