#!/usr/bin/env python
"""Where one training iteration's work is, by kind of operation, without a profiler: every aten call of one
Solver.train_step is counted with its FLOPs (torch.utils.flop_counter's formulas) and the bytes it reads and writes
(the sizes of its tensor arguments and results), and a roofline floor is derived for a given GPU:
time >= max(FLOPs / peak FLOP/s, bytes / memory bandwidth) per call, summed per kind.

    python scripts/op_breakdown.py --preset afhq --batch_size 1 --device cpu      # ~1 min on 2 cores
    python scripts/op_breakdown.py --preset celeba_hq --device cuda --json ops.json
    python scripts/op_breakdown.py --preset celeba_hq --img_size 512 --batch_size 1 --fake   # counts only, ~1.5 min

Every flag of main.py passes through (--preset, --img_size, --batch_size, --w_hpf, ...). The iteration counted is
the second one (the first builds optimizer state). It is a model, not a measurement: it says how much traffic the
element-wise work carries compared with the convolutions, and what a perfect kernel for each could reach; a profile
(scripts/benchmark.py --profile) says what the kernels actually took. It also reports the FLOPs and the
activation memory (bytes saved for backward, core/machinery/memory.py) per image. On a CPU, Adam runs one tensor
at a time (about 2,000 extra small calls); on CUDA it is multi-tensor (foreach).
"""
import argparse
import collections
import contextlib
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils.flop_counter import flop_registry  # noqa: E402

from core.config import parse_args  # noqa: E402
from core.machinery.memory import SavedTensorCounter, to_fake  # noqa: E402,F401 (to_fake: also this script's public name)

# aten op name -> kind; anything else is 'elementwise/other'
KINDS = {
    'convolution': 'conv forward', 'convolution_backward': 'conv backward',
    'addmm': 'matmul', 'mm': 'matmul', 'bmm': 'matmul',
    'native_batch_norm': 'instance norm', 'native_batch_norm_backward': 'instance norm',
    'avg_pool2d': 'pool/upsample', 'avg_pool2d_backward': 'pool/upsample',
    'upsample_nearest2d': 'pool/upsample', 'upsample_nearest2d_backward': 'pool/upsample',
    'upsample_bilinear2d': 'pool/upsample', 'upsample_bilinear2d_backward': 'pool/upsample',
    'leaky_relu': 'activation', 'leaky_relu_backward': 'activation', 'relu': 'activation',
    'threshold_backward': 'activation',
}
ADAM = {'lerp_', 'addcmul_', 'addcdiv_', 'sqrt', '_local_scalar_dense', '_foreach_lerp_', '_foreach_mul_',
        '_foreach_addcmul_', '_foreach_addcdiv_', '_foreach_sqrt', '_foreach_div_', '_foreach_add_', '_fused_adam_'}
NO_DATA = {'view', '_unsafe_view', 'expand', 'as_strided', 't', 'transpose', 'permute', 'unsqueeze', 'squeeze',
           'select', 'slice', 'detach', 'alias', '_reshape_alias', 'unbind', 'split', 'lift_fresh', 'empty',
           'empty_like', 'new_empty', 'new_empty_strided', 'empty_strided', 'split_with_sizes', 'reshape', 'set_',
           '_record_function_enter_new', '_record_function_exit'}


def _tensors(x):
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for y in x:
            yield from _tensors(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _tensors(y)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.rows = collections.defaultdict(lambda: dict(calls=0, flops=0, bytes=0, floor_s=0.0))
        self.peak_flops, self.bandwidth = 1.0, 1.0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func._overloadpacket.__name__
        if name in NO_DATA:
            return out
        seen, nbytes = set(), 0
        for t in list(_tensors(args)) + list(_tensors(kwargs)) + list(_tensors(out)):
            key = (t.untyped_storage()._cdata, t.storage_offset(), tuple(t.shape), t.dtype)  # works on fake tensors
            if key not in seen:
                seen.add(key)
                nbytes += t.numel() * t.element_size()
        packet = func._overloadpacket
        flops = int(flop_registry[packet](*args, **kwargs, out_val=out)) if packet in flop_registry else 0
        kind = 'optimizer (Adam, EMA)' if name in ADAM or name.startswith('_foreach') else \
            KINDS.get(name, 'elementwise/other')
        row = self.rows[(kind, name)]
        row['calls'] += 1
        row['flops'] += flops
        row['bytes'] += nbytes
        row['floor_s'] += max(flops / self.peak_flops, nbytes / self.bandwidth)
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], allow_abbrev=False)
    p.add_argument('--peak_tflops', type=float, default=400.0,
                   help='Dense matrix throughput for the floor (H100 SXM: ~495 TF32, ~990 bf16; 400 = a TF32 '
                        'convolution that runs well)')
    p.add_argument('--bandwidth_tbs', type=float, default=3.35, help='Memory bandwidth in TB/s (H100 SXM: 3.35)')
    p.add_argument('--json', type=str, default=None)
    p.add_argument('--fake', action='store_true',
                   help='Count without arithmetic (FakeTensorMode): any size in a minute or two on a CPU. The FLOPs, '
                        'the activation memory and every row but "elementwise/other" equal the real iteration\'s '
                        '(tests/machinery/test_activation_memory.py); that row also counts the fake mode\'s own copies, and the '
                        'optimizer steps are left out (no FLOPs; their bytes missing)')
    bargs, rest = p.parse_known_args(argv)
    if not any(a == '--mode' or a.startswith('--mode=') for a in rest):
        rest = ['--mode', 'train'] + rest
    args = parse_args(rest)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from benchlib.workload import ensure_wing, new_solver, synthetic_inputs
    from core.machinery.distributed import resolve_device
    device = resolve_device(args.device)
    workdir = tempfile.mkdtemp(prefix='stargan_ops_')
    try:
        args.checkpoint_dir = os.path.join(workdir, 'checkpoints')
        ensure_wing(args, workdir, [])
        solver = new_solver(args, device)
        if bargs.fake:
            mode = to_fake(solver)
            with mode:
                inputs = synthetic_inputs(args, device, args.seed)
        else:
            mode = contextlib.nullcontext()
            inputs = synthetic_inputs(args, device, args.seed)
            solver.train_step(inputs, 0)
        counter = OpCounter()
        counter.peak_flops, counter.bandwidth = bargs.peak_tflops * 1e12, bargs.bandwidth_tbs * 1e12
        with mode, counter, SavedTensorCounter() as saved:
            solver.train_step(inputs, 1)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    by_kind = collections.defaultdict(lambda: dict(calls=0, flops=0, bytes=0, floor_s=0.0, ops={}))
    for (kind, name), row in counter.rows.items():
        k = by_kind[kind]
        for f in ('calls', 'flops', 'bytes', 'floor_s'):
            k[f] += row[f]
        k['ops'][name] = row
    total = dict(calls=sum(k['calls'] for k in by_kind.values()), flops=sum(k['flops'] for k in by_kind.values()),
                 bytes=sum(k['bytes'] for k in by_kind.values()), floor_s=sum(k['floor_s'] for k in by_kind.values()))
    report = dict(config=dict(preset=args.preset, img_size=args.img_size, batch_size=args.batch_size, w_hpf=args.w_hpf,
                              skip=args.skip, device=str(device), torch=torch.__version__),
                  model=dict(peak_tflops=bargs.peak_tflops, bandwidth_tbs=bargs.bandwidth_tbs),
                  total=total, by_kind=dict(sorted(by_kind.items(), key=lambda kv: -kv[1]['floor_s'])),
                  activations=dict(saved_bytes_per_phase=saved.phases, peak_bytes=saved.peak),
                  per_image=dict(flops=total['flops'] / args.batch_size, activation_bytes=saved.peak / args.batch_size))
    print(f"one iteration, {args.preset or 'custom'} setting, {args.img_size} px, batch {args.batch_size}, "
          f"w_hpf {args.w_hpf}, on {device}; floor at {bargs.peak_tflops:g} TFLOP/s, {bargs.bandwidth_tbs:g} TB/s",
          file=sys.stderr)
    print(f"{'kind':<24}{'calls':>8}{'GFLOP':>12}{'GB moved':>11}{'floor ms':>10}{'share':>8}", file=sys.stderr)
    for kind, k in report['by_kind'].items():
        print(f"{kind:<24}{k['calls']:>8}{k['flops'] / 1e9:>12.1f}{k['bytes'] / 1e9:>11.2f}"
              f"{k['floor_s'] * 1e3:>10.2f}{k['floor_s'] / total['floor_s']:>8.1%}", file=sys.stderr)
    print(f"{'total':<24}{total['calls']:>8}{total['flops'] / 1e9:>12.1f}{total['bytes'] / 1e9:>11.2f}"
          f"{total['floor_s'] * 1e3:>10.2f}", file=sys.stderr)
    print(f"per image: {report['per_image']['flops'] / 1e9:.1f} GFLOP; activations saved for backward "
          f"{report['per_image']['activation_bytes'] / 2 ** 20:.1f} MiB (largest of the 4 phases, "
          f"core/machinery/memory.py)", file=sys.stderr)
    if bargs.json:
        with open(bargs.json, 'w') as f:
            json.dump(report, f, indent=1)
    print(json.dumps(dict(total=total, by_kind={k: {f: v[f] for f in ('calls', 'flops', 'bytes', 'floor_s')}
                                                for k, v in report['by_kind'].items()},
                          per_image=report['per_image'])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
