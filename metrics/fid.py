"""Fréchet Inception Distance exactly as the reference computes it (SPEC section 6), with cached real statistics.

    python -m metrics.fid --paths REAL_DIR FAKE_DIR [--img_size 256] [--batch_size 50] [--device auto]

    fid = calculate_fid_given_paths([real_dir, fake_dir], img_size=256, batch_size=50, device='cuda')
    mu, cov = folder_statistics(real_dir, 256, inception, cache_dir='expr/fid_cache')   # cached .npz
    fid = frechet_distance(mu, cov, *feature_statistics(fake_features))

Images: PIL, resized to img_size then to 299x299 (bilinear), ImageNet normalisation (core.data_loader.get_eval_loader).
Features: torchvision's Inception-v3 blocks called one after the other up to the 2048-d average pool (no
transform_input), with torchvision's ImageNet weights. Statistics: float64 mean and np.cov; distance with scipy's sqrtm.
"""
import argparse
import hashlib
import json
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy import linalg
from torchvision import models
from tqdm import tqdm

from core.checkpoint import atomic_write
from core.data_loader import eval_transform, get_eval_loader, listdir
from core.machinery.distributed import resolve_device
from metrics.weights import INCEPTION, file_signature, load_strict, resolve_weights

CACHE_VERSION = 1  # bump when anything that changes the statistics changes


class InceptionV3(nn.Module):
    """Pool features (N, 2048) of torchvision's Inception-v3 for ImageNet-normalised (N, 3, 299, 299) images.
    The torchvision network is held whole so that its weights file loads strictly; only the main path runs."""

    def __init__(self):
        super().__init__()
        self.net = models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        n = self.net
        self.blocks = [n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1,
                       n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, n.maxpool2,
                       n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e,
                       n.Mixed_7a, n.Mixed_7b, n.Mixed_7c]

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)  # same numbers, markedly faster convolutions on CPU
        for block in self.blocks:
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)  # (N, 2048)


_inception_cache = {}


def load_inception(device='cpu', weights=None):
    """InceptionV3 in eval mode on device, weights from `weights` or torchvision's cache; kept for later calls."""
    path = resolve_weights(INCEPTION, weights)
    key = (str(torch.device(device)), *file_signature(path))
    if key not in _inception_cache:
        _inception_cache.clear()  # one network at a time is plenty
        net = InceptionV3()
        load_strict(net.net, path)  # torchvision's file, torchvision's names
        net.eval().requires_grad_(False)
        _inception_cache[key] = net.to(device, memory_format=torch.channels_last)
    return _inception_cache[key]


def frechet_distance(mu, cov, mu2, cov2):
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2·sqrtm(Σ1Σ2)), real part: the reference's formula."""
    # The reference calls sqrtm(..., disp=False)[0]; disp only changes how the error estimate is reported (and is
    # deprecated from SciPy 1.16), the square root is the same.
    cc = linalg.sqrtm(np.dot(cov, cov2))
    dist = np.sum((mu - mu2) ** 2) + np.trace(cov + cov2 - 2 * cc)
    return float(np.real(dist))


def feature_statistics(features):
    """float64 mean and unbiased covariance of (N, D) features (np.cov, as the reference)."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def to_uint8(x):
    """The pixels of the PNG that core.utils.save_image writes for each image: (x + 1) / 2 clamped to [0, 1], then
    torchvision's save_image rounding. (N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8 on the CPU."""
    x = ((x + 1) / 2).clamp_(0, 1)
    return x.mul(255).add_(0.5).clamp_(0, 255).permute(0, 2, 3, 1).to('cpu', torch.uint8).contiguous()


def inception_inputs(images_uint8, img_size, device='cpu', pool=None):
    """(N, H, W, 3) uint8 -> (N, 3, 299, 299) float on device: bit for bit what the eval loader makes of the same
    pixels read back from PNG files, because it is the same transform, on the CPU (on CUDA, division by a scalar
    is a multiplication by its reciprocal, which differs in the last bit). `pool`, a thread pool, runs it in
    parallel (PIL and torch release the GIL)."""
    transform = eval_transform(img_size)

    def one(a):
        return transform(Image.fromarray(a))

    arrays = list(images_uint8.numpy())
    return torch.stack(list(pool.map(one, arrays)) if pool is not None else [one(a) for a in arrays]).to(device)


@torch.inference_mode()
def loader_features(inception, loader, desc=None):
    """Features (N, 2048) float64 of every batch of an eval loader."""
    device = next(inception.parameters()).device
    feats = [inception(x.to(device)).double().cpu() for x in tqdm(loader, desc=desc, leave=False)]
    return torch.cat(feats).numpy()


def _cache_file(path, img_size, weights_path, cache_dir):
    files = listdir(path)
    key = dict(version=CACHE_VERSION, img_size=img_size, weights=file_signature(weights_path),
               files=[[os.path.relpath(f, path), os.path.getsize(f), os.stat(f).st_mtime_ns] for f in files])
    digest = hashlib.md5(json.dumps(key, sort_keys=True).encode()).hexdigest()
    name = os.path.basename(os.path.normpath(path)) or 'images'
    return os.path.join(cache_dir, f'{name}_{img_size}px_{digest}.npz')


def folder_statistics(path, img_size, inception, weights_path=None, cache_dir=None, batch_size=50, num_workers=4):
    """(mu, cov) of the Inception features of every image under path; with cache_dir, read from / written to a .npz
    named by an md5 of the file list (names, sizes, mtimes), img_size and the weights file (path, size, mtime)."""
    fname = None
    if cache_dir is not None:
        if weights_path is None:
            raise ValueError('folder_statistics: weights_path is needed to key the cache')
        fname = _cache_file(path, img_size, weights_path, cache_dir)
        if os.path.isfile(fname):
            with np.load(fname) as f:
                return f['mu'], f['cov']
    loader = get_eval_loader(path, img_size, batch_size, imagenet_normalize=True, shuffle=False,
                             num_workers=num_workers)
    mu, cov = feature_statistics(loader_features(inception, loader, desc=f'Inception {path}'))
    if fname is not None:
        atomic_write(fname, lambda f: np.savez(f, mu=mu, cov=cov))  # readers never see half a file
    return mu, cov


def calculate_fid_given_paths(paths, img_size=256, batch_size=50, device=None, weights=None, cache_dir=None,
                              num_workers=4):
    """FID between the images of paths[0] (real; its statistics cached under cache_dir if given) and paths[1].
    device: where Inception runs (default CPU); weights: Inception file (default torchvision's cache)."""
    print('Calculating FID given paths %s and %s...' % (paths[0], paths[1]))
    device = torch.device(device or 'cpu')
    weights_path = resolve_weights(INCEPTION, weights)
    inception = load_inception(device, weights_path)
    stats = [folder_statistics(path, img_size, inception, weights_path, cache_dir if k == 0 else None,
                               batch_size, num_workers) for k, path in enumerate(paths)]
    return frechet_distance(*stats[0], *stats[1])


def main(argv=None):
    parser = argparse.ArgumentParser(description='FID between two image folders (the reference\'s protocol).')
    parser.add_argument('--paths', type=str, nargs=2, required=True, help='paths to real and fake images')
    parser.add_argument('--img_size', type=int, default=256, help='image resolution')
    parser.add_argument('--batch_size', type=int, default=64, help='batch size to use')
    parser.add_argument('--num_workers', type=int, default=4, help='Number of workers used in DataLoader')
    parser.add_argument('--device', type=str, default='auto', help='auto (cuda if available), cpu, cuda, cuda:1...')
    parser.add_argument('--inception_weights', type=str, default=None,
                        help='Inception-v3 weights file (default: torchvision cache under TORCH_HOME)')
    parser.add_argument('--fid_cache_dir', type=str, default=None, help='cache the statistics of the real folder here')
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    fid_value = calculate_fid_given_paths(args.paths, args.img_size, args.batch_size, device=device,
                                          weights=args.inception_weights, cache_dir=args.fid_cache_dir,
                                          num_workers=args.num_workers)
    print('FID: ', fid_value)
    return fid_value


if __name__ == '__main__':
    main()
