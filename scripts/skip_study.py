#!/usr/bin/env python
"""The diversity/intactness trade-off of the generator's encoder-to-decoder skips, measured: trains --skip hpf,
unet and none with the same seed and data, evaluates each, writes a table (Markdown and JSON), a scatter plot of
diversity against intactness and one grid of the three variants on the same sources and styles.

    python scripts/skip_study.py                                      # demo data, CPU, ~8-15 min on 2 idle cores
    python scripts/skip_study.py --figures_dir docs/skip_study        # what docs/skip_study.md shows
    python scripts/skip_study.py --data data/celeba_hq --preset celeba_hq --total_iters 20000 --device cuda \\
        --inception_weights inception_v3_google-0cc3c7bd.pth --lpips_alexnet_weights alexnet-owt-7be5be79.pth

Every flag of main.py passes through (--preset, --total_iters, --img_size, --w_hpf, --device, ...). Without --data:
the demo preset (core/config.py) on the demo data (core.demo.data.make_demo_dataset). Its w_hpf is 0, where hpf has
no skip and is the same network as none: hpf is trained once and reported for both. --w_hpf 1 --hpf_masks ones makes
them differ on shapes (the high-pass skip unmasked; docs/skip_study.md: 300 iterations do not train that deeper,
shortcut-less decoder). With --data (a folder with train/ and val/ domain folders) give the preset or flags of the
setting (e.g. --preset celeba_hq: FAN masks, wing.ckpt). The runs share the seed, so they see the same batches,
latent codes and (tests/test_skip.py) initial weights. A finished run is reused when its args.json agrees.

Measures, per variant and mode (latent, reference), on the validation images, every src -> trg task:
- FID, LPIPS diversity, LPIPS to source (and the FAN landmark shift for faces) from metrics/eval.py, when the
  ImageNet weights are there (--inception_weights/--lpips_alexnet_weights, or torchvision's cache); else "not
  measured (no ImageNet weights)".
- Weight-free, always: pixel diversity (mean pairwise L1 between the outputs of one source, in [0, 1] pixel units)
  and pixel L1 to source.
- On the demo data: the geometry kept (the shape's centre shift as a fraction of the image size, its size change,
  relative) and the target-domain accuracy (does the output show the target shape: IoU with a disc against a square
  of the same area and centre; the same classifier's accuracy on the real validation images is reported with it).
"""
import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.checkpoint import CheckpointIO  # noqa: E402
from core.config import parse_args  # noqa: E402
import core.demo.data as demo_data  # noqa: E402
from core.machinery.distributed import resolve_device  # noqa: E402
from core.model import build_model, masks_of  # noqa: E402

VARIANTS = ('hpf', 'unet', 'none')
MODES = ('latent', 'reference')
NOT_MEASURED = 'not measured (no ImageNet weights)'


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], allow_abbrev=False)
    p.add_argument('--out', default='expr/skip_study',
                   help='Runs (checkpoints, samples, eval) and, by default, figures')
    p.add_argument('--figures_dir', default=None, help='Where the table, plot and grid go (default: --out)')
    p.add_argument('--data', default=None, help='A folder with train/ and val/ domain folders (default: the demo data)')
    p.add_argument('--variants', default=','.join(VARIANTS), help='Comma-separated --skip values to train')
    p.add_argument('--grid_sources', type=int, default=6, help='Source images (columns) of the grid')
    p.add_argument('--retrain', action='store_true', help='Train again even when a variant\'s final checkpoint exists')
    sargs, rest = p.parse_known_args(argv)
    sargs.variants = [v for v in sargs.variants.split(',') if v]
    for v in sargs.variants:
        if v not in VARIANTS:
            p.error(f'--variants: {v} is not one of {", ".join(VARIANTS)}')
    if any(a.split('=')[0] in ('--mode', '--skip') for a in rest):
        p.error('--mode and --skip are set by the study (train, then each of --variants)')
    base = ['--mode', 'train']
    if sargs.data is None:
        base += ['--preset', 'demo']
    return sargs, base + rest


def variant_args(sargs, argv, skip, data_root):
    run = os.path.join(sargs.out, skip)
    return parse_args(argv + ['--skip', skip, '--checkpoint_dir', os.path.join(run, 'checkpoints'),
                              '--sample_dir', os.path.join(run, 'samples'), '--eval_dir', os.path.join(run, 'eval'),
                              '--train_img_dir', os.path.join(data_root, 'train'),
                              '--val_img_dir', os.path.join(data_root, 'val'), '--eval_every', '0'])


# the flags that make a finished run the one asked for (a run is reused only when they all agree)
RUN_KEYS = ('skip', 'w_hpf', 'hpf_masks', 'img_size', 'total_iters', 'seed', 'base_dim', 'max_conv_dim', 'hidden_dim',
            'style_dim', 'latent_dim', 'batch_size', 'lr', 'f_lr', 'lambda_ds', 'ds_iter', 'ema_beta', 'train_img_dir')


def train(args, retrain):
    """main.py's training (same seeds, loaders, checkpoints). Returns (wall seconds, trained now): for a run
    trained before, the seconds its train_log.jsonl last logged (None without a log)."""
    import main as cli
    final = os.path.join(args.checkpoint_dir, '%06d_state.ckpt' % args.total_iters)
    if os.path.exists(final) and not retrain:
        with open(os.path.join(args.checkpoint_dir, 'args.json')) as f:
            saved = json.load(f)
        differ = [k for k in RUN_KEYS if saved.get(k) != args[k]]
        if differ:
            raise SystemExit(f'{args.checkpoint_dir} was trained with other flags ({", ".join(differ)}): '
                             f'pass --retrain, or another --out')
        print(f'--skip {args.skip}: {final} exists, not training again (--retrain to do so)')
        log = os.path.join(args.checkpoint_dir, 'train_log.jsonl')
        if not os.path.exists(log):
            return None, False
        with open(log) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        return (lines[-1]['elapsed_s'] if lines else None), False
    t = time.perf_counter()
    cli.main(args)
    return time.perf_counter() - t, True


def load_ema(args, device):
    _, nets_ema = build_model(args)
    ema = {k: v for k, v in nets_ema.items() if k != 'fan'}
    CheckpointIO(os.path.join(args.checkpoint_dir, '{:06d}_nets_ema.ckpt'), **ema).load(args.total_iters)
    for net in nets_ema.values():
        net.to(device).eval()
    return nets_ema


def val_images(args):
    """{domain: (N, 3, S, S) in [-1, 1]} of the validation set, in file order."""
    from core.data_loader import get_test_loader
    loader = get_test_loader(args.val_img_dir, img_size=args.img_size, batch_size=256, shuffle=False, num_workers=0,
                             num_domains=args.num_domains)
    xs, ys = zip(*loader)
    x, y = torch.cat(xs), torch.cat(ys)
    return {d: x[y == i] for i, d in enumerate(loader.dataset.domains)}


# ------------------------------------------------------------------------------------------------ weight-free measures
def shape_geometry(x):
    """Demo images (B, 3, H, W) in [-1, 1] -> dict: centre (B, 2) and size (B,, the bounding box's side) in pixels,
    shape (B,, the index into core.demo.data.DOMAINS, -1 for neither) and found (B,), read by core.demo.data.measure
    (the drawer's own measurements)."""
    m = demo_data.measure(x)
    side = x.size(2)
    return dict(centre=m.centre * side, size=2 * m.half_width * side, shape=m.shape, found=m.shape >= 0)


@torch.no_grad()
def outputs_of(nets, x, y_trg, mode, x_trg_val, num_outs, generator):
    """num_outs translations of every x: latent (a new z each) or reference (a random trg val image each)."""
    masks = masks_of(nets, x)
    outs = []
    for _ in range(num_outs):
        if mode == 'latent':
            z = torch.randn(x.size(0), nets.mapping_network.shared[0].in_features, generator=generator).to(x.device)
            s = nets.mapping_network(z, y_trg)
        else:
            idx = torch.randint(0, x_trg_val.size(0), (x.size(0),), generator=generator)
            s = nets.style_encoder(x_trg_val[idx], y_trg)
        outs.append(nets.generator(x, s, masks=masks).clamp(-1, 1))
    return outs


def pixel_measures(x, outs, trg=None):
    """Weight-free measures of one task: pixel diversity, pixel L1 to source (both in [0, 1] units) and, for the
    demo shapes (trg given), the geometry kept and the target-domain accuracy."""
    k = len(outs)
    pairs = [(outs[i] - outs[j]).abs().mean().item() / 2 for i in range(k - 1) for j in range(i + 1, k)]
    m = dict(pixel_diversity=float(np.mean(pairs)),
             pixel_l1_to_source=float(np.mean([(o - x).abs().mean().item() / 2 for o in outs])))
    if trg is not None:
        src = shape_geometry(x.cpu())
        S = x.size(2)
        shifts, sizes, correct, found = [], [], [], []
        for o in outs:
            g = shape_geometry(o.cpu())
            ok = g['found'] & src['found']
            shifts.append(((g['centre'] - src['centre']).norm(dim=1) / S)[ok])
            sizes.append((g['size'] / src['size'] - 1).abs()[ok])
            correct.append((g['shape'] == demo_data.DOMAINS.index(trg)).float())
            found.append(g['found'].float())
        m.update(centre_shift=torch.cat(shifts).mean().item(), size_change=torch.cat(sizes).mean().item(),
                 target_shape_accuracy=torch.cat(correct).mean().item(), shape_found=torch.cat(found).mean().item())
    return m


def weight_free(nets, args, xs, device):
    """{mode: {measure: mean over tasks}} of pixel_measures, with the same codes and references for every variant."""
    domains = list(xs)
    shapes = tuple(domains) == demo_data.DOMAINS
    result = {}
    for mode_id, mode in enumerate(MODES):
        per_task = []
        for t, trg in enumerate(domains):
            for src in domains:
                if src == trg:
                    continue
                g = torch.Generator().manual_seed(args.seed * 100 + mode_id * 10 + t)
                x = xs[src].to(device)
                y_trg = torch.full((x.size(0),), t, dtype=torch.long, device=device)
                outs = outputs_of(nets, x, y_trg, mode, xs[trg].to(device), args.num_outs_per_domain, g)
                per_task.append(pixel_measures(x, outs, trg if shapes else None))
        result[mode] = {k: float(np.mean([m[k] for m in per_task])) for k in per_task[0]}
    return result


def classifier_accuracy(xs):
    """The shape classifier on the real validation images (the ceiling of target_shape_accuracy)."""
    right = [(shape_geometry(x)['shape'] == demo_data.DOMAINS.index(d)).float() for d, x in xs.items()]
    return torch.cat(right).mean().item()


# ------------------------------------------------------------------------------------------------ ImageNet measures
def imagenet_weights(args):
    """True when both weights files are there (explicit flags must name existing files: an error otherwise)."""
    from metrics.weights import ALEXNET, INCEPTION, WeightsNotFoundError, resolve_weights
    try:
        for spec, explicit in ((INCEPTION, args.inception_weights), (ALEXNET, args.lpips_alexnet_weights)):
            resolve_weights(spec, explicit, download=False)
    except WeightsNotFoundError:
        if args.inception_weights or args.lpips_alexnet_weights:
            raise
        return False
    return True


def imagenet_measures(nets, args):
    """{mode: {FID, LPIPS_diversity, LPIPS_to_source[, landmark_shift]}} (means over tasks) from metrics/eval.py."""
    from metrics.eval import calculate_metrics
    out = {}
    for mode in MODES:
        lpips_dict, fid_dict = calculate_metrics(nets, args, args.total_iters, mode)
        with open(os.path.join(args.eval_dir, 'INTACT_%.5i_%s.json' % (args.total_iters, mode))) as f:
            intact = json.load(f)
        out[mode] = dict(FID=fid_dict[f'FID_{mode}/mean'], LPIPS_diversity=lpips_dict[f'LPIPS_{mode}/mean'],
                         LPIPS_to_source=intact[f'LPIPS_to_source_{mode}/mean'])
        if f'landmark_shift_{mode}/mean' in intact:
            out[mode]['landmark_shift'] = intact[f'landmark_shift_{mode}/mean']
    return out


# ------------------------------------------------------------------------------------------------ figures
COLUMNS = [('FID', 'FID', '{:.2f}'), ('LPIPS_diversity', 'LPIPS diversity', '{:.4f}'),
           ('LPIPS_to_source', 'LPIPS to source', '{:.4f}'), ('landmark_shift', 'landmark shift', '{:.4f}'),
           ('pixel_diversity', 'pixel diversity', '{:.4f}'), ('pixel_l1_to_source', 'pixel L1 to source', '{:.4f}'),
           ('centre_shift', 'centre shift', '{:.4f}'), ('size_change', 'size change', '{:.3f}'),
           ('target_shape_accuracy', 'target-shape accuracy', '{:.2f}')]


def markdown(report):
    rows = report['results']
    present = [c for c in COLUMNS if any(c[0] in r['measures'][m] for r in rows for m in MODES)
               or (c[0] in ('FID', 'LPIPS_diversity', 'LPIPS_to_source') and not report['imagenet_weights'])]
    head = ['variant', 'mode', 'G parameters', 'train s'] + [c[1] for c in present]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        for mode in MODES:
            m = r['measures'][mode]
            cells = [r['skip'] + (f" (= {r['same_as']}, w_hpf 0)" if r.get('same_as') else ''), mode,
                     f"{r['generator_parameters']:,}",
                     '-' if r['train_s'] is None else f"{r['train_s']:.0f}"]
            for key, _, fmt in present:
                v = m.get(key)
                cells.append(fmt.format(v) if isinstance(v, float) else (v or '-'))
            lines.append('| ' + ' | '.join(cells) + ' |')
    notes = [f"{report['iterations']} iterations per variant, seed {report['seed']}, {report['img_size']} px, "
             f"w_hpf {report['w_hpf']}, hpf masks: {report['hpf_masks']}, data: {report['data']}, "
             f"device {report['device']}. train s: wall seconds of main.py's training (as its train_log.jsonl "
             f"logged them for a run reused), whatever else the machine was running."]
    if 'classifier_accuracy_on_real' in report:
        notes.append(f"Target-shape classifier on the real validation images: "
                     f"{report['classifier_accuracy_on_real']:.2f} accuracy (the ceiling of the column).")
    if not report['imagenet_weights']:
        notes.append(f'FID, LPIPS diversity, LPIPS to source: {NOT_MEASURED}.')
    return '\n'.join(lines) + '\n\n' + '\n'.join(notes) + '\n'


def scatter(report, fname):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = [('pixel_l1_to_source', 'pixel_diversity', 'pixel L1 to source (lower: more kept)', 'pixel diversity')]
    if report['imagenet_weights']:
        panels.append(('LPIPS_to_source', 'LPIPS_diversity', 'LPIPS to source (lower: more kept)', 'LPIPS diversity'))
    if 'classifier_accuracy_on_real' in report:
        panels.append(('centre_shift', 'target_shape_accuracy', 'shape centre shift / image size (lower: kept)',
                       'target-shape accuracy'))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4), squeeze=False)
    colours = dict(hpf='tab:blue', unet='tab:green', none='tab:red')
    # a variant reported as another one's network (none = hpf at w_hpf 0) shares its point and label
    names = {r['skip']: ' = '.join([r['skip']] + [o['skip'] for o in report['results'] if o.get('same_as') == r['skip']])
             for r in report['results']}
    for ax, (xk, yk, xl, yl) in zip(axes[0], panels):
        for r in report['results']:
            if r.get('same_as'):
                continue
            for mode, marker in zip(MODES, ('o', 's')):
                m = r['measures'][mode]
                ax.scatter(m[xk], m[yk], c=colours[r['skip']], marker=marker, s=60,
                           label=f"{names[r['skip']]} ({mode})")
                ax.annotate(names[r['skip']], (m[xk], m[yk]), textcoords='offset points', xytext=(5, 4),
                            fontsize=8)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc='best')
    fig.suptitle(f"--skip variants after {report['iterations']} iterations ({report['data']}); "
                 f"circles: latent, squares: reference", fontsize=9)
    fig.tight_layout()
    fig.savefig(fname, dpi=110)
    plt.close(fig)


@torch.no_grad()
def grid(nets_by_variant, xs, args, n_src, fname, device):
    """Rows: sources, references (each of the other domain), then per variant its translation of each source with
    that reference's style and with one latent code (the same codes for every variant). Labels on the left."""
    from PIL import Image, ImageDraw
    domains = list(xs)
    per = max(1, n_src // len(domains))
    src = torch.cat([xs[d][:per] for d in domains]).to(device)
    y_src = torch.cat([torch.full((per,), i, dtype=torch.long) for i in range(len(domains))]).to(device)
    y_trg = (y_src + 1) % len(domains)
    g = torch.Generator().manual_seed(args.seed)
    ref = torch.stack([xs[domains[int(t)]][torch.randint(per, len(xs[domains[int(t)]]), (1,), generator=g)][0]
                       for t in y_trg]).to(device)
    z = torch.randn(src.size(0), args.latent_dim, generator=g).to(device)
    rows, labels = [src, ref], ['source', 'reference']
    for skip, nets in nets_by_variant.items():
        masks = masks_of(nets, src)
        rows.append(nets.generator(src, nets.style_encoder(ref, y_trg), masks=masks))
        rows.append(nets.generator(src, nets.mapping_network(z, y_trg), masks=masks))
        labels += [f'{skip}: ref style', f'{skip}: latent']
    S, n = args.img_size, src.size(0)
    tile = max(S, 64)  # small images upscaled (nearest) so that the labels fit
    label_w = 110
    canvas = Image.new('RGB', (label_w + n * tile, len(rows) * tile), 'white')
    draw = ImageDraw.Draw(canvas)
    for r, (row, label) in enumerate(zip(rows, labels)):
        pixels = ((row.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        for c, a in enumerate(pixels):
            canvas.paste(Image.fromarray(a).resize((tile, tile), Image.NEAREST), (label_w + c * tile, r * tile))
        draw.text((4, r * tile + tile // 2 - 6), label, fill='black')
    canvas.save(fname)


# ------------------------------------------------------------------------------------------------ the study
def main(argv=None):
    sargs, argv = parse(argv)
    figures = sargs.figures_dir or sargs.out
    os.makedirs(figures, exist_ok=True)
    if sargs.data is None:
        from core.demo.data import make_demo_dataset
        data_root = make_demo_dataset(os.path.join(sargs.out, 'demo_data'))
    else:
        data_root = sargs.data
    t0 = time.perf_counter()
    results, nets_by_variant = [], {}
    args = None
    for skip in sargs.variants:
        args = variant_args(sargs, argv, skip, data_root)
        if skip == 'none' and args.w_hpf == 0 and 'hpf' in nets_by_variant:
            # the same network as hpf (no skip in either), the same seed: the same training, bit for bit
            # (tests/test_skip.py: same start, same forward); reported once more, not trained twice
            nets_by_variant['none'] = nets_by_variant['hpf']
            results.append(dict(results[[r['skip'] for r in results].index('hpf')], skip='none', same_as='hpf'))
            continue
        train_s, trained_now = train(args, sargs.retrain)
        device = resolve_device(args.device)
        nets = load_ema(args, device)
        nets_by_variant[skip] = nets
        xs = val_images(args)
        t = time.perf_counter()
        measures = weight_free(nets, args, xs, device)
        have_weights = imagenet_weights(args)
        if have_weights:
            for mode, values in imagenet_measures(nets, args).items():
                measures[mode].update(values)
        else:
            for mode in MODES:
                measures[mode].update(FID=NOT_MEASURED, LPIPS_diversity=NOT_MEASURED, LPIPS_to_source=NOT_MEASURED)
        results.append(dict(skip=skip, train_s=train_s, trained_now=trained_now, eval_s=time.perf_counter() - t,
                            measures=measures,
                            generator_parameters=sum(p.numel() for p in nets.generator.parameters())))
    report = dict(iterations=args.total_iters, seed=args.seed, img_size=args.img_size, w_hpf=args.w_hpf,
                  hpf_masks=args.hpf_masks, data='demo (core.demo.data)' if sargs.data is None else sargs.data,
                  device=str(device), torch_threads=torch.get_num_threads(), imagenet_weights=have_weights,
                  total_s=None, results=results)
    if tuple(xs) == demo_data.DOMAINS:
        report['classifier_accuracy_on_real'] = classifier_accuracy(xs)
    grid(nets_by_variant, xs, args, sargs.grid_sources, os.path.join(figures, 'skip_study_grid.png'), device)
    scatter(report, os.path.join(figures, 'skip_study_scatter.png'))
    report['total_s'] = time.perf_counter() - t0
    with open(os.path.join(figures, 'skip_study.json'), 'w') as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(figures, 'skip_study.md'), 'w') as f:
        f.write(markdown(report))
    print(markdown(report))
    print(f"total {report['total_s']:.0f} s; table, plot and grid in {figures}")
    return report


if __name__ == '__main__':
    main()
