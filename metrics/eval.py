"""FID and LPIPS of a trained model, the reference's protocol (SPEC section 6), computed in one pass.

    calculate_metrics(nets_ema, args, step, mode='latent')      # then mode='reference'
    # -> eval_dir/LPIPS_{step:05d}_{mode}.json, eval_dir/FID_{step:05d}_{mode}.json, eval_dir/{src}2{trg}/*.png,
    #    eval_dir/INTACT_{step:05d}_{mode}.json (ours: LPIPS to source, landmark shift; metrics/intactness.py)
    evaluate(nets_ema, args, step)                              # both modes, on rank 0 (--mode eval, eval_every)
    for i, x_src, x_fakes in task_outputs(nets_ema, args, mode, trg_idx, src_idx, styles): ...   # one task's images

For every ordered pair of different domains (task `{src}2{trg}`) each validation image of src gets
num_outs_per_domain translations with trg styles (latent: a new z per output; reference: the next batch of trg
validation images). LPIPS: mean pairwise distance of the outputs of a batch, averaged over batches, then tasks.
FID: the outputs against the TRAINING images of trg.

The numbers are the reference's; what is faster:
- the real statistics of each training domain are computed once and cached on disk (metrics.fid.folder_statistics);
- the generated images go to Inception straight from memory: quantised to the PNG's uint8 pixels and put through
  the eval loader's transform, so the features are those of the PNGs read back; writing the PNGs is optional
  (args.no_save_eval_images) and done by args.num_workers background processes;
- LPIPS is built once and every image goes through AlexNet once per batch, not once per pair.
Convolutions run in full float32 (no TF32) unless allow_tf32=True. The reference shuffles the validation images
from the global RNG; here the shuffles and the latent codes come from generators seeded by args.seed, so a run is
reproducible.
"""
import contextlib
import multiprocessing
import os
import shutil
from collections import OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image
from torch.utils import data
from tqdm import tqdm

from core import utils
from core.config import complete_args
from core.data_loader import DataError, get_eval_loader, seeded_generator
from core.machinery.distributed import barrier, is_main_process
from core.model import masks_of
from metrics.fid import (feature_statistics, folder_statistics, frechet_distance, inception_inputs, load_inception,
                         to_uint8)
from metrics.intactness import IntactnessMeter, landmark_fan, summary, with_means
from metrics.lpips import calculate_lpips_given_images
from metrics.weights import ALEXNET, INCEPTION, resolve_weights

MODES = ('latent', 'reference')


def val_loader(root, args, generator, drop_last=False):
    """get_eval_loader(imagenet_normalize=False) as the reference calls it (shuffled), shuffled by `generator`."""
    loader = get_eval_loader(root, args.img_size, args.val_batch_size, imagenet_normalize=False, shuffle=True,
                             num_workers=args.num_workers, drop_last=drop_last)
    return data.DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=True, generator=generator,
                           num_workers=loader.num_workers, drop_last=drop_last)


def _cycle(loader):
    while True:
        yield from loader


def _save_pngs(pixels, fnames):
    """pixels: (N, H, W, 3) uint8. PIL with its defaults, as torchvision's save_image: the reference's files."""
    for a, fname in zip(pixels, fnames):
        Image.fromarray(a).save(fname)


class PngWriter:
    """Writes batches of PNG files in `processes` background processes (PIL holds the GIL while it compresses, some
    10 ms an image at 256 px), or at once when processes is 0."""

    def __init__(self, processes=0):
        self.pool = None
        if processes > 0:  # spawned: safe whatever threads (CUDA, OpenMP) this process runs
            self.pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context('spawn'))
        self.pending = deque()

    def write(self, pixels, fnames):
        if self.pool is None:
            _save_pngs(pixels, fnames)
        else:
            self.pending.append(self.pool.submit(_save_pngs, pixels, fnames))

    def wait(self, keep=0):
        """Waits until at most `keep` batches are pending (bounded memory); raises a write error."""
        while len(self.pending) > keep:
            self.pending.popleft().result()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            if exc[0] is None:
                self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(cancel_futures=True)


@contextlib.contextmanager
def ieee_float32(enabled=True):
    """Full float32 convolutions: PyTorch lets cuDNN use TF32 by default on Ampere and later GPUs, which moves the
    networks' outputs by ~1e-3 and FID in its decimals; the paper's numbers were computed without it."""
    old = torch.backends.cudnn.allow_tf32
    if enabled:
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def domains_of(val_img_dir):
    domains = sorted(d for d in os.listdir(val_img_dir)
                     if os.path.isdir(os.path.join(val_img_dir, d)) and not d.startswith('.'))
    if len(domains) < 2:
        raise DataError(f'--val_img_dir {val_img_dir}: evaluation needs at least two domain folders, found {domains}')
    return domains


def source_loader(args, mode, trg_idx, src_idx):
    """The shuffled validation images of task src_idx -> trg_idx (a stream seeded by --seed, the mode and the task)."""
    src = domains_of(args.val_img_dir)[src_idx]
    return val_loader(os.path.join(args.val_img_dir, src), args,
                      seeded_generator(args.seed, MODES.index(mode), 0, trg_idx, src_idx))


@torch.no_grad()
def task_outputs(nets, args, mode, trg_idx, src_idx, styles):
    """The images of one task, as the reference makes them: for each batch i of source images, the list of its
    num_outs_per_domain translations, each with a new style from styles(N, y_trg). Yields (i, x_src, x_fakes)."""
    device = next(nets.generator.parameters()).device
    loader = source_loader(args, mode, trg_idx, src_idx)
    for i, x_src in enumerate(tqdm(loader, total=len(loader), desc='%s2%s' % tuple(
            domains_of(args.val_img_dir)[k] for k in (src_idx, trg_idx)))):
        N = x_src.size(0)
        x_src = x_src.to(device)
        y_trg = torch.full((N,), trg_idx, dtype=torch.long, device=device)
        masks = masks_of(nets, x_src)
        yield i, x_src, [nets.generator(x_src, styles(N, y_trg), masks=masks)
                         for _ in range(args.num_outs_per_domain)]


def translate_task(nets, args, mode, trg_idx, src_idx, styles, inception, resize_pool, writer=None, path_fake=None,
                   intactness=None):
    """Generates the outputs of one task. Returns (LPIPS of each batch, Inception features (M, 2048) float64).
    With a PngWriter, PNGs go to path_fake; an IntactnessMeter (metrics/intactness.py) sees every batch of sources
    with its outputs."""
    device = next(nets.generator.parameters()).device
    lpips_values, feats = [], []
    for i, x_src, group_of_images in task_outputs(nets, args, mode, trg_idx, src_idx, styles):
        N = x_src.size(0)
        for j, x_fake in enumerate(group_of_images):
            pixels = to_uint8(x_fake)  # (N, H, W, 3) uint8: the PNGs' content
            if writer is not None:
                writer.write(pixels.numpy(), [os.path.join(path_fake, '%.4i_%.2i.png' % (
                    i * args.val_batch_size + (k + 1), j + 1)) for k in range(N)])
            # features stay on the device until the task ends, so the GPU runs ahead while PIL resizes the next batch
            feats.append(inception(inception_inputs(pixels, args.img_size, device, resize_pool)))
        lpips_values.append(calculate_lpips_given_images(group_of_images, args.lpips_alexnet_weights))
        if intactness is not None:
            intactness.update(x_src, group_of_images)
        if writer is not None:
            writer.wait(keep=4 * args.num_outs_per_domain)  # at most ~4 batches of images waiting to be written
    return lpips_values, torch.cat(feats).double().cpu().numpy()


def style_source(nets, args, mode, trg_idx):
    """styles(N, y_trg) -> (N, style_dim): a new z per call (latent), or the next batch of trg val images
    (reference; one stream per target domain, continued across its source domains, as the reference does)."""
    device = next(nets.generator.parameters()).device
    mode_id = MODES.index(mode)
    if mode == 'latent':
        g_z = seeded_generator(args.seed, mode_id, 1, trg_idx)

        def styles(N, y_trg):
            z_trg = torch.randn(N, args.latent_dim, generator=g_z).to(device)
            return nets.mapping_network(z_trg, y_trg)
        return styles

    trg = domains_of(args.val_img_dir)[trg_idx]
    loader_ref = val_loader(os.path.join(args.val_img_dir, trg), args, seeded_generator(args.seed, mode_id, 2, trg_idx),
                            drop_last=True)
    if len(loader_ref) == 0:
        raise DataError(f'reference mode: {args.val_img_dir}/{trg} has fewer images than --val_batch_size '
                        f'{args.val_batch_size} (its loader drops the last incomplete batch, as the reference\'s).')
    refs = _cycle(loader_ref)

    def styles(N, y_trg):
        return nets.style_encoder(next(refs).to(device)[:N], y_trg)
    return styles


def _evaluate(nets, args, mode, domains, inception_path):
    """(LPIPS per task, FID per task, intactness per task) as OrderedDicts, tasks in the reference's order
    (target-major)."""
    device = next(nets.generator.parameters()).device
    inception = load_inception(device, inception_path)
    real_stats = {}
    for trg in domains:  # once per target domain (the reference: once per task), and cached across runs
        real_stats[trg] = folder_statistics(os.path.join(args.train_img_dir, trg), args.img_size, inception,
                                            inception_path, args.fid_cache_dir, args.val_batch_size, args.num_workers)
    save_images = not args.no_save_eval_images
    lpips_dict, fake_stats, intact_dict = OrderedDict(), OrderedDict(), OrderedDict()
    meter = IntactnessMeter(device, args.lpips_alexnet_weights, landmark_fan(args, nets, device))
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as resize_pool, \
            PngWriter(args.num_workers if save_images else 0) as writer:
        for trg_idx, trg in enumerate(domains):
            styles = style_source(nets, args, mode, trg_idx)
            for src_idx, src in enumerate(domains):
                if src == trg:
                    continue
                task = '%s2%s' % (src, trg)
                path_fake = os.path.join(args.eval_dir, task) if save_images else None
                if save_images:
                    shutil.rmtree(path_fake, ignore_errors=True)
                    os.makedirs(path_fake)
                print('Generating images and calculating LPIPS for %s...' % task)
                lpips_values, feats = translate_task(nets, args, mode, trg_idx, src_idx, styles, inception,
                                                     resize_pool, writer if save_images else None, path_fake,
                                                     intactness=meter)
                intact_dict.update(meter.pop_task(mode, task))
                lpips_dict['LPIPS_%s/%s' % (mode, task)] = float(np.array(lpips_values).mean())
                fake_stats[task] = trg, feature_statistics(feats)
    print('Calculating FID for all tasks...')
    fid_dict = OrderedDict()
    for task, (trg, stats) in fake_stats.items():
        fid_dict['FID_%s/%s' % (mode, task)] = frechet_distance(*real_stats[trg], *stats)
    return lpips_dict, fid_dict, intact_dict


@torch.no_grad()
def calculate_metrics(nets, args, step, mode, allow_tf32=False):
    """Writes LPIPS_{step:05d}_{mode}.json and FID_{step:05d}_{mode}.json to args.eval_dir; returns both dicts.
    Runs on the device of nets.generator; allow_tf32=True trades exactness for speed on recent GPUs."""
    print('Calculating evaluation metrics...')
    assert mode in MODES, mode
    args = complete_args(args)  # a public entry point: the caller's args may come from the reference's parser
    # missing weights are an error before any work
    inception_path = resolve_weights(INCEPTION, args.inception_weights)
    resolve_weights(ALEXNET, args.lpips_alexnet_weights)
    domains = domains_of(args.val_img_dir)
    print('Number of domains: %d' % len(domains))
    os.makedirs(args.eval_dir, exist_ok=True)
    with ieee_float32(not allow_tf32):
        lpips_dict, fid_dict, intact_dict = _evaluate(nets, args, mode, domains, inception_path)

    for name, values in (('LPIPS', lpips_dict), ('FID', fid_dict)):
        mean = 0
        for value in list(values.values()):  # the reference's running sum
            mean += value / len(values)
        values['%s_%s/mean' % (name, mode)] = mean
        utils.save_json(values, os.path.join(args.eval_dir, '%s_%.5i_%s.json' % (name, step, mode)))
    intact_dict = with_means(intact_dict, mode)
    utils.save_json(intact_dict, os.path.join(args.eval_dir, 'INTACT_%.5i_%s.json' % (step, mode)))
    print(summary(mode, lpips_dict, fid_dict, intact_dict))
    return lpips_dict, fid_dict


def evaluate(nets, args, step):
    """Both modes on the main process (the others wait at the barrier): --mode eval and every eval_every steps."""
    if is_main_process():
        for mode in MODES:
            calculate_metrics(nets, args, step, mode=mode)
    barrier()
