"""Times the evaluation protocol (FID + LPIPS, SPEC section 6) on synthetic data, ours against a reference-like run.

    PYTHONPATH=. python scripts/benchmark_eval.py --device cuda                        # CelebA-HQ sizes (long)
    PYTHONPATH=. python scripts/benchmark_eval.py --device cuda --n_train 1000 --n_val 200 --reference_like
    PYTHONPATH=. python scripts/benchmark_eval.py --device cpu --n_train 4 --n_val 2 --img_size 32 --num_outs 2 \\
        --base_dim 8 --max_conv_dim 32 --w_hpf 0 --reference_like          # a smoke test

Everything is random: noise JPEGs (train images at --train_res, as CelebA-HQ's 1024 px files; val at --img_size),
networks with random weights, random Inception-v3 / AlexNet weights written to a temporary TORCH_HOME. Prints one JSON
object: seconds per phase of each protocol, and the largest difference between their metrics (the same seeds are
used, so the two should agree up to float noise).

"ours" = metrics.eval.calculate_metrics (real statistics cached, no disk round trip, LPIPS built once, each image
through AlexNet once). "reference_like" = the reference's order of work: every PNG written and read back, the real
statistics re-extracted for every task, the LPIPS model rebuilt for every batch and run on every pair.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from munch import Munch
from PIL import Image
from torchvision import models

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from core import utils  # noqa: E402
from core.config import complete_args  # noqa: E402
from core.machinery.distributed import resolve_device  # noqa: E402
from core.model import build_model  # noqa: E402
import metrics.eval as E  # noqa: E402
import metrics.fid as fid  # noqa: E402
import metrics.lpips as lp  # noqa: E402
from metrics.weights import ALEXNET, INCEPTION  # noqa: E402


def calibrate_batchnorm_(net, x):
    """BatchNorm running statistics from one train-mode forward of x, so that random weights give features of order
    one (the default running statistics, 0 and 1, make a random Inception's features vanish)."""
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, that batch's statistics
    net.train()
    with torch.no_grad():
        net(x)
    return net.eval()


def write_random_weights(torch_home, seed=0, nets=('inception', 'alexnet')):
    """Random Inception-v3 and/or AlexNet weights where torchvision looks for its ImageNet files under torch_home
    (the caller points TORCH_HOME there). Returns {name: path}."""
    torch.manual_seed(seed)
    paths = {}
    for name in nets:
        if name == 'inception':  # calibrated through the feature path only, on small images: quick on a CPU
            spec, net = INCEPTION, calibrate_batchnorm_(fid.InceptionV3(), torch.rand(2, 3, 128, 128) * 4 - 2).net
        else:
            spec, net = ALEXNET, models.alexnet(weights=None)
        paths[name] = os.path.join(torch_home, 'hub', 'checkpoints', spec.filename)  # = cached_path under it
        os.makedirs(os.path.dirname(paths[name]), exist_ok=True)
        torch.save(net.state_dict(), paths[name])
    return paths


def _noise_jpeg(job):
    fname, size, seed = job
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (size // 16 + 1, size // 16 + 1, 3), dtype=np.uint8)  # smooth noise, photo-like size
    img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
    img.save(fname, quality=95)


def make_dataset(root, domains, n_train, n_val, train_res, val_res, workers=1):
    """root/{train,val}/<domain>/NNNNNN.jpg of noise."""
    jobs = []
    for split, n, res in (('train', n_train, train_res), ('val', n_val, val_res)):
        for d in domains:
            os.makedirs(os.path.join(root, split, d), exist_ok=True)
            jobs += [(os.path.join(root, split, d, '%06d.jpg' % i), res, len(jobs) + i) for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_noise_jpeg, jobs, chunksize=64))
    else:
        for job in jobs:
            _noise_jpeg(job)


class PhaseTimer:
    """Wall seconds per phase, measured by wrapping functions (synchronising the GPU around them). A wrapped call
    inside another one counts for the outer phase only."""

    def __init__(self, device):
        self.seconds, self.device, self.depth = defaultdict(float), torch.device(device), 0

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    def wrap(self, phase, fn):
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.sync()
            t = time.perf_counter()
            self.depth += 1
            try:
                out = fn(*args, **kwargs)
                self.sync()
            finally:
                self.depth -= 1
            self.seconds[phase] += time.perf_counter() - t
            return out
        return timed


class TimedModule(torch.nn.Module):
    def __init__(self, net, timed_call):
        super().__init__()
        self.net, self.timed_call = net, timed_call

    def forward(self, x):
        return self.timed_call(x)


def run_ours(nets, args, timer):
    """calculate_metrics with its pieces timed; generation (+ PNG writes) is what remains of the total."""
    names = ('folder_statistics', 'calculate_lpips_given_images', 'inception_inputs', 'load_inception',
             'frechet_distance')
    saved = {k: getattr(E, k) for k in names}
    E.folder_statistics = timer.wrap('real_stats', saved['folder_statistics'])
    E.calculate_lpips_given_images = timer.wrap('lpips', saved['calculate_lpips_given_images'])
    E.inception_inputs = timer.wrap('fid_features', saved['inception_inputs'])
    E.frechet_distance = timer.wrap('frechet', saved['frechet_distance'])

    def load_inception(*a, **kw):
        net = saved['load_inception'](*a, **kw)
        return TimedModule(net, timer.wrap('fid_features', net))
    E.load_inception = load_inception
    try:
        results = OrderedDict()
        for mode in args.modes:
            timer.sync()
            t = time.perf_counter()
            lpips_dict, fid_dict = E.calculate_metrics(nets, args, 0, mode, allow_tf32=args.allow_tf32)
            timer.sync()
            timer.seconds['total'] += time.perf_counter() - t
            results.update(lpips_dict)
            results.update(fid_dict)
    finally:
        for k, v in saved.items():
            setattr(E, k, v)
    return results


@torch.no_grad()
def run_reference_like(nets, args, timer):
    """The reference's order of work, with our seeded loaders and codes (so the numbers match ours)."""
    device = next(nets.generator.parameters()).device
    domains = E.domains_of(args.val_img_dir)
    results = OrderedDict()
    t_total = time.perf_counter()
    with E.ieee_float32(not args.allow_tf32):
        for mode in args.modes:
            fid_jobs = []
            for trg_idx, trg in enumerate(domains):
                styles = E.style_source(nets, args, mode, trg_idx)
                for src_idx, src in enumerate(domains):
                    if src == trg:
                        continue
                    task = '%s2%s' % (src, trg)
                    path_fake = os.path.join(args.eval_dir, task)
                    shutil.rmtree(path_fake, ignore_errors=True)
                    os.makedirs(path_fake)
                    values = []
                    outputs = E.task_outputs(nets, args, mode, trg_idx, src_idx, styles)
                    while True:
                        timer.sync()
                        t = time.perf_counter()
                        try:
                            i, x_src, group = next(outputs)
                        except StopIteration:
                            break
                        for j, x_fake in enumerate(group):
                            for k in range(x_src.size(0)):
                                fname = os.path.join(path_fake, '%.4i_%.2i.png' % (i * args.val_batch_size + k + 1,
                                                                                   j + 1))
                                utils.save_image(x_fake[k], ncol=1, filename=fname)
                        timer.seconds['ref_generation_and_png'] += time.perf_counter() - t
                        values.append(timer.wrap('ref_lpips', _lpips_rebuilt_every_pair)(group, args))
                    results['LPIPS_%s/%s' % (mode, task)] = float(np.mean(values))
                    fid_jobs.append(('FID_%s/%s' % (mode, task), trg, path_fake))
            for key, trg, path_fake in fid_jobs:  # the reference computes FID after all tasks, from the files
                fid._inception_cache.clear()  # the reference builds Inception for every call
                results[key] = timer.wrap('ref_fid', fid.calculate_fid_given_paths)(
                    [os.path.join(args.train_img_dir, trg), path_fake], args.img_size, args.val_batch_size,
                    device=device, weights=args.inception_weights, num_workers=args.num_workers)
    timer.seconds['ref_total'] = time.perf_counter() - t_total
    return results


def _lpips_rebuilt_every_pair(group, args):
    lp._lpips_cache.clear()  # the reference builds the model (and loads AlexNet) for every batch
    model = lp.load_lpips(group[0].device, args.lpips_alexnet_weights)
    values = [model(group[i], group[j]).mean() for i in range(len(group) - 1) for j in range(i + 1, len(group))]
    return torch.stack(values).mean().item()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='auto', help='auto, cpu, cuda, cuda:1...')
    p.add_argument('--domains', type=int, default=2, help='2 as CelebA-HQ, 3 as AFHQ')
    p.add_argument('--n_train', type=int, default=14000, help='training images per domain (CelebA-HQ: ~14k)')
    p.add_argument('--n_val', type=int, default=1000, help='validation images per domain (CelebA-HQ: 1000)')
    p.add_argument('--train_res', type=int, default=1024, help='size of the training JPEGs (CelebA-HQ: 1024)')
    p.add_argument('--img_size', type=int, default=256)
    p.add_argument('--num_outs', type=int, default=10, help='num_outs_per_domain')
    p.add_argument('--val_batch_size', type=int, default=32)
    p.add_argument('--w_hpf', type=float, default=1, help='1 as CelebA-HQ (FAN masks), 0 as AFHQ')
    p.add_argument('--base_dim', type=int, default=0, help='0: the reference widths')
    p.add_argument('--max_conv_dim', type=int, default=512)
    p.add_argument('--num_workers', type=int, default=4)
    p.add_argument('--modes', nargs='+', default=['latent', 'reference'], choices=E.MODES)
    p.add_argument('--reference_like', action='store_true', help='also time the reference-like protocol')
    p.add_argument('--no_save_eval_images', action='store_true', help='ours without writing PNGs')
    p.add_argument('--allow_tf32', action='store_true', help='let cuDNN use TF32 (faster, not the exact numbers)')
    p.add_argument('--workdir', default=None, help='keep the data here (default: a temporary folder, removed)')
    p.add_argument('--seed', type=int, default=777)
    return p.parse_args(argv)


def main(argv=None):
    opt = parse_args(argv)
    device = resolve_device(opt.device)
    work = opt.workdir or tempfile.mkdtemp(prefix='bench_eval_')
    old_home = os.environ.get('TORCH_HOME')
    try:
        domains = ['domain%d' % d for d in range(opt.domains)]
        t = time.perf_counter()
        os.environ['TORCH_HOME'] = os.path.join(work, 'torch_home')
        write_random_weights(os.environ['TORCH_HOME'], opt.seed)
        make_dataset(os.path.join(work, 'data'), domains, opt.n_train, opt.n_val, opt.train_res, opt.img_size,
                     workers=min(16, os.cpu_count() or 1))
        setup_s = time.perf_counter() - t
        args = complete_args(Munch(
            img_size=opt.img_size, num_domains=opt.domains, latent_dim=16, hidden_dim=512, style_dim=64,
            w_hpf=opt.w_hpf, base_dim=opt.base_dim, max_conv_dim=opt.max_conv_dim, wing_path=None,
            val_batch_size=min(opt.val_batch_size, opt.n_val),  # reference mode needs a full batch
            num_outs_per_domain=opt.num_outs, num_workers=opt.num_workers, seed=opt.seed,
            modes=opt.modes, allow_tf32=opt.allow_tf32,
            train_img_dir=os.path.join(work, 'data', 'train'), val_img_dir=os.path.join(work, 'data', 'val'),
            eval_dir=os.path.join(work, 'eval'), fid_cache_dir=os.path.join(work, 'fid_cache'),
            no_save_eval_images=opt.no_save_eval_images, inception_weights=None, lpips_alexnet_weights=None))
        torch.manual_seed(opt.seed)
        _, nets_ema = build_model(args)
        for net in nets_ema.values():
            net.to(device).eval()

        timer = PhaseTimer(device)
        ours = run_ours(nets_ema, args, timer)
        report = OrderedDict(device=str(torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'),
                             setup_s=round(setup_s, 2), config={k: v for k, v in vars(opt).items() if k != 'workdir'},
                             n_generated=opt.domains * (opt.domains - 1) * opt.n_val * opt.num_outs * len(opt.modes))
        s = timer.seconds
        report['ours'] = {k: round(v, 3) for k, v in s.items() if not k.startswith('ref_')}
        # what is left: generation (G, F or E, FAN masks), uint8 quantisation, PNG writes
        report['ours']['generation_and_rest'] = round(
            s['total'] - s['real_stats'] - s['lpips'] - s['fid_features'] - s['frechet'], 3)
        if opt.reference_like:
            print('ours:', json.dumps(report['ours']), flush=True)  # survives a timeout of what follows
            ref = run_reference_like(nets_ema, args, timer)
            report['reference_like'] = {k[4:]: round(v, 3) for k, v in timer.seconds.items() if k.startswith('ref_')}
            report['speedup'] = round(s['ref_total'] / s['total'], 2)
            report['max_metric_diff'] = {
                'LPIPS': max(abs(ref[k] - ours[k]) for k in ref if k.startswith('LPIPS')),
                'FID_rel': max(abs(ref[k] - ours[k]) / max(abs(ref[k]), 1e-12) for k in ref if k.startswith('FID'))}
        report['metrics'] = ours
        print(json.dumps(report, indent=2))
        return report
    finally:
        if old_home is None:
            os.environ.pop('TORCH_HOME', None)
        else:
            os.environ['TORCH_HOME'] = old_home
        if not opt.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    main()
