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
compile_bf16 (autocast; opt-in, changes numerics).

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
import datetime
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback

T_START = time.perf_counter()

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from munch import Munch  # noqa: E402

from core.config import parse_args  # noqa: E402

MODES = {  # name -> the settings it changes (the rest are the command line's)
    # the reference's work: also the weight gradients of D (and E) in the G steps, which it throws away
    'reference_work': dict(compile=False, amp='none', skip_unused_grads=False),
    'eager': dict(compile=False, amp='none'),  # this project's default
    'compile': dict(compile=True, amp='none', compile_mode='default'),
    'compile_cudagraphs': dict(compile=True, amp='none', compile_mode='reduce-overhead'),
    'compile_autotune': dict(compile=True, amp='none', compile_mode='max-autotune-no-cudagraphs'),
    'bf16': dict(compile=False, amp='bf16'),
    'compile_bf16': dict(compile=True, amp='bf16', compile_mode='default'),
}
ALIASES = {'amp': 'bf16', 'compile_amp': 'compile_bf16', 'fp32': 'eager', 'baseline': 'eager'}
TRAINABLE = ('generator', 'mapping_network', 'style_encoder', 'discriminator')
DEFINITIONS = {
    's_per_iter': 'mean seconds per iteration = wall time of the timed region / iterations (throughput)',
    's_per_iter_median': 'median of the per-iteration times (CUDA events between iterations; perf_counter on CPU)',
    'tflops': 'flops_per_iter / s_per_iter / 1e12 (the reference_work mode does more FLOPs: its own count, or none '
              'with --flops_per_iter)',
    'peak_mem_gib': 'torch.cuda.max_memory_allocated over the timed iterations (reset after warm-up)',
    'param_max_rel_diff': 'after one iteration from the same weights and batch: max|p_mode - p_eager| / max|p_eager|, '
                          'maxima over all parameter elements (of a network, or of G, F, E, D together)',
    'param_max_abs_diff': 'max|p_mode - p_eager| over all parameter elements (one Adam step moves an element by about '
                          'lr = 1e-4, so a flipped gradient sign shows as ~2e-4 per step)',
    'weight_max_rel_diff': 'max over conv/linear weight tensors of max|p_mode - p_eager| / max|p_eager| (per tensor; '
                           'zero-initialised biases are left out: after one step they are themselves O(lr))',
    'param_rel_l2': '||p_mode - p_eager||_2 / ||p_eager||_2 over all parameters',
    'update_rel_l2': '||p_mode - p_eager||_2 / ||p_eager - p_init||_2 over all parameters: difference of the '
                     'one-iteration updates, relative to the update',
    'grad_rel_l2': '||g_mode - g_eager||_2 / ||g_eager||_2 of the gradients left by the last backward (G reference '
                   'step: G; E and D too in the reference_work mode, where they are not frozen)',
    'loss_max_rel_diff': 'max over the 14 loss terms of |t_mode - t_eager| / max(|t_eager|, 1e-6)',
    'loss_first_step_max_rel_diff': 'the same over D/latent_{real,fake,reg}, computed before any optimiser step: '
                                    'forward (and R1 backward) numerics alone, from identical weights',
    'numerics_note': 'Adam\'s first step moves each element by about lr * sign(grad) (beta1 = 0), so elements whose '
                     'gradient is near zero can flip and update_rel_l2 is large even for rounding-level differences; '
                     'compare each mode with the eager_repeat (nondeterminism) and eager_no_tf32 (TF32 rounding, '
                     'CUDA) rows',
}


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

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def elapsed():
    return time.perf_counter() - T_START


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


def tf32_flags():
    out = {}
    for key, fn in (('cuda_matmul_allow_tf32', lambda: torch.backends.cuda.matmul.allow_tf32),
                    ('cudnn_allow_tf32', lambda: torch.backends.cudnn.allow_tf32),
                    ('float32_matmul_precision', torch.get_float32_matmul_precision),
                    ('cudnn_benchmark', lambda: torch.backends.cudnn.benchmark)):
        try:
            out[key] = fn()
        except Exception as e:  # an API that moved
            out[key] = f'unavailable: {e}'
    return out


def env_info(device):
    info = dict(device=str(device), device_type=device.type, torch=torch.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), platform=platform.platform(), cpu_count=os.cpu_count(),
                torch_num_threads=torch.get_num_threads(), numpy=np.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    try:
        info['cudnn'] = torch.backends.cudnn.version()
    except Exception:
        info['cudnn'] = None
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=torch.cuda.get_device_name(device), capability='%d.%d' % (props.major, props.minor),
                    device_mem_gib=round(props.total_memory / 2 ** 30, 2), multiprocessors=props.multi_processor_count)
    else:
        info['device_name'] = platform.processor() or platform.machine()
    try:
        import triton
        info['triton'] = triton.__version__
    except Exception:
        info['triton'] = None
    return info


def model_config(args):
    keys = ('preset', 'img_size', 'batch_size', 'num_domains', 'latent_dim', 'style_dim', 'hidden_dim', 'base_dim',
            'max_conv_dim', 'w_hpf', 'lambda_reg', 'lambda_sty', 'lambda_ds', 'lambda_cyc', 'ds_iter', 'lr', 'f_lr',
            'beta1', 'beta2', 'weight_decay', 'seed', 'compile', 'amp', 'num_workers', 'randcrop_prob', 'device',
            'train_img_dir', 'wing_path')
    return {k: args.get(k) for k in keys}


def ensure_wing(args, workdir, notes):
    """w_hpf > 0 needs FAN weights: without a file at --wing_path, random ones (same cost, meaningless masks)."""
    if args.w_hpf <= 0:
        return None
    if os.path.isfile(args.wing_path):
        return f'FAN weights from {args.wing_path}'
    from core.wing import FAN
    fname = os.path.join(workdir, 'wing_random.ckpt')
    torch.manual_seed(args.seed)
    torch.save({'state_dict': FAN().state_dict()}, fname)
    msg = (f'--wing_path {args.wing_path} not found: using a randomly initialised FAN saved to {fname} '
           f'(the same compute as the real wing.ckpt; the masks are meaningless)')
    notes.append(msg)
    log('note:', msg)
    args.wing_path = fname
    return msg


def _one_image(fname, res, seed):
    from PIL import Image
    rng = np.random.default_rng(seed)
    # a smooth random picture plus mild grain: compresses like a photo (~150 KB at 1024 px, quality 90), so that
    # decoding costs what decoding a dataset image costs (pure noise would be ~3x bigger and slower)
    base = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((res, res), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.float32) + rng.standard_normal((res, res, 3), dtype=np.float32) * 4
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(fname, 'JPEG', quality=90)
    return os.path.getsize(fname)


def make_images(root, num_domains, n, res, seed):
    from concurrent.futures import ThreadPoolExecutor
    jobs = []
    for d in range(num_domains):
        os.makedirs(os.path.join(root, f'domain{d}'), exist_ok=True)
        for i in range(n):
            jobs.append((os.path.join(root, f'domain{d}', f'{i:05d}.jpg'), res, seed * 100003 + d * 10007 + i))
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as ex:
        sizes = list(ex.map(lambda j: _one_image(*j), jobs))
    return dict(images_per_domain=n, num_domains=num_domains, image_res=res, seconds=round(time.perf_counter() - t, 2),
                mean_kib=round(sum(sizes) / len(sizes) / 1024, 1), folder=root)


def synthetic_inputs(args, device, seed):
    g = torch.Generator().manual_seed(seed)
    B, S, K = args.batch_size, args.img_size, args.num_domains
    x = [torch.rand(B, 3, S, S, generator=g) * 2 - 1 for _ in range(3)]
    inputs = Munch(x_src=x[0], y_src=torch.randint(0, K, (B,), generator=g), x_ref=x[1], x_ref2=x[2],
                   y_ref=torch.randint(0, K, (B,), generator=g), z_trg=torch.randn(B, args.latent_dim, generator=g),
                   z_trg2=torch.randn(B, args.latent_dim, generator=g))
    return Munch({k: v.to(device) for k, v in inputs.items()})


def build_loaders(args, device):
    from core.data_loader import get_train_loader
    common = dict(img_size=args.img_size, batch_size=args.batch_size, prob=args.randcrop_prob,
                  num_workers=args.num_workers, seed=args.seed, start_step=0, num_domains=args.num_domains,
                  skip_bad_images=args.skip_bad_images, pin_memory=device.type == 'cuda', latent_dim=args.latent_dim)
    t = time.perf_counter()
    src = get_train_loader(args.train_img_dir, which='source', **common)
    ref = get_train_loader(args.train_img_dir, which='reference', **common)
    return Munch(src=src, ref=ref, setup_s=round(time.perf_counter() - t, 2))


def new_solver(args, device):
    from core.solver import Solver
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    solver = Solver(args, device)
    solver.skip_unused_grads = args.get('skip_unused_grads', True)
    return solver


def count_params(solver):
    return {n: sum(p.numel() for p in getattr(solver, n).parameters()) for n in TRAINABLE}


def dynamo_stats():
    """How much torch.compile did: graphs, recompilations, graph breaks (reasons), compile time."""
    try:
        from torch._dynamo.utils import counters
        out = dict(stats={k: int(v) for k, v in counters['stats'].items()},
                   graph_breaks=sum(counters['graph_break'].values()),
                   graph_break_reasons=[str(k)[:200] for k in list(counters['graph_break'])[:10]],
                   recompiles=int(sum(counters['recompiles'].values())) if 'recompiles' in counters else None)
        try:
            from torch._dynamo.utils import compile_times
            out['compile_times'] = str(compile_times(repr='str'))[-1500:]
        except Exception:
            pass
        return out
    except Exception as e:
        return dict(error=f'{type(e).__name__}: {e}')


class _NoModuleTracker:
    parents = ('Global',)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _FlopCounterFallback:
    """The same formulas (torch.utils.flop_counter.flop_registry) in a bare TorchDispatchMode: used only if the
    FlopCounterMode route fails on another PyTorch version."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.counts = {}

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                packet = func._overloadpacket
                if packet in flop_registry:
                    n = flop_registry[packet](*args, **kwargs, out_val=out)
                    self.counts[str(packet)] = self.counts.get(str(packet), 0) + int(n)
                return out
        return Mode()


def count_flops(args, device, inputs):
    """FLOPs of one eager iteration on the device (the count does not depend on compile or autocast), the count per
    op, and the parameter counts."""
    from torch.utils.flop_counter import FlopCounterMode
    a = Munch(args, compile=False, amp='none')
    errors = []
    for route in ('FlopCounterMode', 'fallback'):
        solver = new_solver(a, device)
        try:
            params = count_params(solver)
            if route == 'FlopCounterMode':
                counter = FlopCounterMode(display=False)
                # its module tracker (backward hooks) breaks autograd.grad (R1: "A leaf node was passed to
                # _will_engine_execute_node ..."): count every op under 'Global', without attributing it to modules
                counter.mod_tracker = _NoModuleTracker()
                with counter:
                    solver.train_step(inputs, 0)
                sync(device)
                by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get('Global', {}).items()}
            else:
                mode = _FlopCounterFallback()
                with mode:
                    solver.train_step(inputs, 0)
                sync(device)
                by_op = mode.counts
            return int(sum(by_op.values())), by_op, params
        except Exception as e:
            errors.append(f'{route}: {type(e).__name__}: {e}')
            log(traceback.format_exc())
        finally:
            del solver
            free_memory(device)
    raise RuntimeError('; '.join(errors))


def snapshot(solver):
    """CPU fp32 copies of the parameters (and the gradients left by the last backward) of G, F, E, D."""
    params, grads = {}, {}
    for n in TRAINABLE:
        for k, p in getattr(solver, n).named_parameters():
            params[f'{n}.{k}'] = p.detach().float().cpu().clone()
            if p.grad is not None:
                grads[f'{n}.{k}'] = p.grad.detach().float().cpu().clone()
    return params, grads


def compare_numerics(base, other):
    """base/other: dict(p0, p1, grads, terms). Returns the metrics of DEFINITIONS, overall and per network."""
    out = dict(initial_weights_identical=all(torch.equal(base['p0'][k], other['p0'][k]) for k in base['p0']))
    per_net = {}
    for n in TRAINABLE + ('all',):
        keys = [k for k in base['p1'] if n == 'all' or k.startswith(n + '.')]
        m = dict(max_abs=0.0, max_p=0.0, w_rel=0.0, dd=0.0, pp=0.0, du=0.0, gd=0.0, gn=0.0)
        for k in keys:
            b, o, i = base['p1'][k], other['p1'][k], base['p0'][k]
            d = o - b
            dmax, bmax = float(d.abs().max()), float(b.abs().max())
            m['max_abs'] = max(m['max_abs'], dmax)
            m['max_p'] = max(m['max_p'], bmax)
            if b.dim() >= 2:  # conv / linear weights (biases and norm affines start at 0 or 1: see DEFINITIONS)
                m['w_rel'] = max(m['w_rel'], dmax / max(bmax, 1e-30))
            m['dd'] += float(d.pow(2).sum())
            m['pp'] += float(b.pow(2).sum())
            m['du'] += float((b - i).pow(2).sum())
            if k in base['grads'] and k in other['grads']:
                m['gd'] += float((other['grads'][k] - base['grads'][k]).pow(2).sum())
                m['gn'] += float(base['grads'][k].pow(2).sum())
        rel = lambda a, b: math.sqrt(a) / math.sqrt(b) if b > 0 else None  # noqa: E731
        per_net[n] = dict(param_max_rel_diff=m['max_abs'] / m['max_p'] if m['max_p'] > 0 else None,
                          param_max_abs_diff=m['max_abs'], weight_max_rel_diff=m['w_rel'],
                          param_rel_l2=rel(m['dd'], m['pp']), update_rel_l2=rel(m['dd'], m['du']),
                          grad_rel_l2=rel(m['gd'], m['gn']))
    out.update(per_net.pop('all'))
    tb, to = base['terms'], other['terms']
    out['loss_max_abs_diff'] = float((to - tb).abs().max())
    rel = (to - tb).abs() / tb.abs().clamp_min(1e-6)
    out['loss_max_rel_diff'] = float(rel.max())
    out['loss_first_step_max_rel_diff'] = float(rel[:3].max())  # D/latent_*: before any optimiser step
    out['loss_terms_finite'] = bool(torch.isfinite(to).all())
    out['per_network'] = per_net
    return out


def _profile_table(prof, device, trace, mode_name, n_top=25):
    on_dev = device.type == 'cuda'
    key = 'self_device_time_total' if on_dev else 'self_cpu_time_total'
    avgs = prof.key_averages()
    log(avgs.table(sort_by=key, row_limit=n_top))
    rows = sorted(avgs, key=lambda e: getattr(e, key, 0), reverse=True)[:n_top]
    top = [dict(name=e.key, calls=e.count, self_device_ms=round(getattr(e, 'self_device_time_total', 0) / 1e3, 3),
                self_cpu_ms=round(e.self_cpu_time_total / 1e3, 3)) for e in rows]
    out = dict(sort_by=key, top_ops=top)
    if trace:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(trace)), exist_ok=True)
            prof.export_chrome_trace(trace)
            out['trace'] = trace
            log(f'chrome trace of {mode_name}: {trace} ({os.path.getsize(trace) / 2 ** 20:.1f} MiB)')
        except Exception as e:
            out['trace_error'] = f'{type(e).__name__}: {e}'
    return out


# ------------------------------------------------------------------------------------------------------ one mode

def run_mode(name, args, bargs, device, fixed_inputs, loaders, numerics, profile_trace=None):
    """Builds fresh networks (seeded), optionally runs the numerics iteration (fixed batch, initial weights), warms
    up, times. Returns a dict; raises on failure (the caller records the error)."""
    res = dict(mode=name, compile=bool(args.compile), amp=args.amp, status='running',
               compile_mode=args.compile_mode if args.compile else None,
               skip_unused_grads=args.get('skip_unused_grads', True))
    t_build = time.perf_counter()
    solver = new_solver(args, device)
    try:
        if args.compile:
            try:
                from torch._dynamo.utils import counters
                counters.clear()  # dynamo_stats() then describes this mode only
            except Exception:
                pass
            solver._compile()
        res['build_s'] = round(time.perf_counter() - t_build, 2)
        res['tf32'] = tf32_flags()

        if loaders is not None:
            from core.data_loader import InputFetcher
            fetcher = InputFetcher(loaders.src, loaders.ref, args.latent_dim, 'train', device)
            fetch = lambda: next(fetcher)  # noqa: E731
        else:
            fetch = lambda: fixed_inputs  # noqa: E731

        step = 0
        if numerics:  # the first iteration: fixed batch, initial weights (compilation happens here too)
            p0, _ = snapshot(solver)
            sync(device)
            t = time.perf_counter()
            terms = solver.train_step(fixed_inputs, 0)
            sync(device)
            res['first_iter_s'] = round(time.perf_counter() - t, 3)
            p1, grads = snapshot(solver)
            numerics_state = dict(p0=p0, p1=p1, grads=grads, terms=terms.detach().float().cpu())
            step = 1
        else:
            numerics_state = None

        t = time.perf_counter()
        n_warm = 0
        for i in range(bargs.warmup):
            solver.train_step(fetch(), step)
            step += 1
            n_warm += 1
            if i == 0 and not numerics:
                sync(device)
                res['first_iter_s'] = round(time.perf_counter() - t, 3)
            if elapsed() > bargs.time_budget_s:
                res.setdefault('notes', []).append(f'warm-up cut to {n_warm} iterations by --time_budget_s')
                break
        sync(device)
        if args.compile:
            res['dynamo'] = dynamo_stats()
        res['warmup_iters'] = n_warm
        res['warmup_s'] = round(time.perf_counter() - t, 2)
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)

        # ---- the timed region
        n_min = min(3, bargs.iters)
        per_iter, truncated = [], False
        if device.type == 'cuda':
            events = [torch.cuda.Event(enable_timing=True) for _ in range(bargs.iters + 1)]
            sync(device)
            t0 = time.perf_counter()
            events[0].record()
            n = 0
            for i in range(bargs.iters):
                terms = solver.train_step(fetch(), step)
                step += 1
                events[i + 1].record()
                n = i + 1
                if n >= n_min and elapsed() > bargs.time_budget_s:
                    truncated = n < bargs.iters
                    break
            sync(device)
            wall = time.perf_counter() - t0
            per_iter = [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(n)]
        else:
            t0 = time.perf_counter()
            n = 0
            for i in range(bargs.iters):
                ti = time.perf_counter()
                terms = solver.train_step(fetch(), step)
                step += 1
                per_iter.append(time.perf_counter() - ti)
                n = i + 1
                if n >= n_min and elapsed() > bargs.time_budget_s:
                    truncated = n < bargs.iters
                    break
            wall = time.perf_counter() - t0
        mean = wall / n
        res.update(status='ok', iters_timed=n, truncated_by_budget=truncated, wall_s=round(wall, 3),
                   s_per_iter=mean, s_per_iter_mean=mean, s_per_iter_median=statistics.median(per_iter),
                   s_per_iter_min=min(per_iter), s_per_iter_max=max(per_iter), it_per_s=1.0 / mean,
                   est_hours_per_100k_iters=round(mean * 1e5 / 3600, 2),
                   loss_terms_finite=bool(torch.isfinite(terms).all()), per_iter_s=[round(x, 6) for x in per_iter])
        if truncated:
            res.setdefault('notes', []).append(f'timed loop stopped after {n} of {bargs.iters} iterations by '
                                               f'--time_budget_s {bargs.time_budget_s}')
        if device.type == 'cuda':
            res['peak_mem_gib'] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 3)
            res['peak_reserved_gib'] = round(torch.cuda.max_memory_reserved(device) / 2 ** 30, 3)
        else:
            res['peak_mem_gib'] = None

        if bargs.profile:
            if elapsed() > bargs.time_budget_s:
                res['profile'] = dict(skipped='time budget spent')
            else:
                try:
                    from torch.profiler import ProfilerActivity, profile
                    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
                    sync(device)
                    with profile(activities=acts) as prof:
                        for _ in range(bargs.profile_iters):
                            solver.train_step(fetch(), step)
                            step += 1
                        sync(device)
                    res['profile'] = dict(iters=bargs.profile_iters,
                                          **_profile_table(prof, device, profile_trace, name))
                    del prof
                except Exception as e:
                    res['profile'] = dict(error=f'{type(e).__name__}: {e}')
                    log(traceback.format_exc())
        return res, numerics_state
    finally:
        del solver
        free_memory(device)


def numerics_only(name, args, device, fixed_inputs, cudnn_tf32=None):
    """One iteration on the fixed batch from the initial weights; returns the numerics state."""
    old = torch.backends.cudnn.allow_tf32
    if cudnn_tf32 is not None:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    solver = new_solver(args, device)
    try:
        p0, _ = snapshot(solver)
        terms = solver.train_step(fixed_inputs, 0)
        sync(device)
        p1, grads = snapshot(solver)
        return dict(p0=p0, p1=p1, grads=grads, terms=terms.detach().float().cpu())
    finally:
        torch.backends.cudnn.allow_tf32 = old
        del solver
        free_memory(device)


# ------------------------------------------------------------------------------------------------------ report

def fmt(v, spec):
    return 'n/a' if v is None else format(v, spec)


def print_table(report):
    rows = report['results']
    base = next((r for r in rows if r['mode'] == 'eager' and r['status'] == 'ok'), None)
    num = report.get('numerics') or {}
    log('')
    c = report['config']
    log(f"StarGAN v2 train_step, {report['env'].get('device_name')} ({report['env']['device']}), preset {c['preset']}, "
        f"img {c['img_size']}, batch {c['batch_size']}, w_hpf {c['w_hpf']}, loader {report['flags']['loader']}; "
        f"FLOPs/iter {fmt(report.get('flops_per_iter'), '.4g')}")
    hdr = (f"{'mode':<14}{'s/it med':>10}{'s/it mean':>10}{'it/s':>8}{'TFLOP/s':>9}{'peak GiB':>9}{'speedup':>8}"
           f"{'1st it s':>9}{'weight rel':>11}{'update rel':>11}{'grad rel':>10}{'loss rel':>10}{'loss1 rel':>10}")
    log(hdr)
    for r in rows:
        nm = num.get(r['mode'], {})
        if r['status'] != 'ok':
            log(f"{r['mode']:<14}{r['status']}: {r.get('error', r.get('reason', ''))[:150]}")
            continue
        sp = base['s_per_iter'] / r['s_per_iter'] if base else None
        log(f"{r['mode']:<14}{r['s_per_iter_median']:>10.4f}{r['s_per_iter']:>10.4f}{r['it_per_s']:>8.2f}"
            f"{fmt(r.get('tflops'), '.2f'):>9}{fmt(r.get('peak_mem_gib'), '.2f'):>9}{fmt(sp, '.2f'):>8}"
            f"{fmt(r.get('first_iter_s'), '.1f'):>9}{fmt(nm.get('weight_max_rel_diff'), '.2e'):>11}"
            f"{fmt(nm.get('update_rel_l2'), '.2e'):>11}{fmt(nm.get('grad_rel_l2'), '.2e'):>10}"
            f"{fmt(nm.get('loss_max_rel_diff'), '.2e'):>10}{fmt(nm.get('loss_first_step_max_rel_diff'), '.2e'):>10}")
    for k in ('eager_repeat', 'eager_no_tf32'):
        if k in num and 'error' not in num[k]:
            nm = num[k]
            log(f"{k:<14}{'(numerics reference: one iteration only)':>63}"
                f"{fmt(nm.get('weight_max_rel_diff'), '.2e'):>11}{fmt(nm.get('update_rel_l2'), '.2e'):>11}"
                f"{fmt(nm.get('grad_rel_l2'), '.2e'):>10}{fmt(nm.get('loss_max_rel_diff'), '.2e'):>10}"
                f"{fmt(nm.get('loss_first_step_max_rel_diff'), '.2e'):>10}")
    if num:
        log('numerics: one iteration from the same weights and batch vs eager; weight rel = max|dW|/max|W| per '
            'conv/linear weight; update/grad rel = relative L2; loss1 = the D/latent terms, before any optimiser step')
    log('')


def write_json(report, path, complete):
    report['complete'] = complete
    report['elapsed_s'] = round(elapsed(), 1)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(report, f, indent=1, default=str)
        os.replace(tmp, path)


def stdout_view(report):
    """The printed JSON: the per-iteration lists stay in the --json file only."""
    def strip(r):
        return {k: v for k, v in r.items() if k != 'per_iter_s'}
    out = dict(report)
    out['results'] = [strip(r) for r in report['results']]
    out.pop('per_iter_s', None)
    return out


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

    from core.solver import resolve_device
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
            label = next((k for k, v in MODES.items() if all(args.get(f, True) == x for f, x in v.items())), 'custom')
            modes = [(label, args)]
        numerics = bargs.compare and not bargs.no_numerics
        states, report['numerics'] = {}, ({} if numerics else None)

        def add_numerics(name, state):
            if 'eager' in states and name != 'eager':
                report['numerics'][name] = compare_numerics(states['eager'], state)

        if numerics and 'eager' not in bargs.modes:  # a baseline is needed
            try:
                states['eager'] = numerics_only('eager', Munch(args, compile=False, amp='none'), device, fixed_inputs)
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
                if not margs.get('skip_unused_grads', True):  # more work than the default: its own count
                    flops = report.get('flops_per_iter_reference_work')
                    if flops is None and not bargs.flops_per_iter:
                        try:
                            flops = count_flops(margs, device, fixed_inputs)[0]
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
                                st = numerics_only(ref_name, margs, device, fixed_inputs, **kw)
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
            write_json(report, bargs.json, complete=False)

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
    write_json(report, bargs.json, complete=True)
    json_out.write(json.dumps(stdout_view(report), default=str) + '\n')
    json_out.flush()
    return exit_code


if __name__ == '__main__':
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
