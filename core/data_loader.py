"""Data pipeline (SPEC section 4): balanced source/reference training loaders, test and eval loaders, InputFetcher.

    loaders = Munch(src=get_train_loader(root, 'source', ...), ref=get_train_loader(root, 'reference', ...),
                    val=get_test_loader(val_root, ...))
    fetcher = InputFetcher(loaders.src, loaders.ref, args.latent_dim, 'train', device)
    inputs = next(fetcher)   # Munch(x_src, y_src, x_ref, x_ref2, y_ref, z_trg, z_trg2) on the device

Determinism: the training samplers and the augmentation draw from generators seeded by (seed, position), not from
the global RNG, so a run resumed at step N sees exactly the batches of an uninterrupted run, with any number of workers.
"""
import functools
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from munch import Munch
from PIL import Image
from torch.utils import data
from torchvision import transforms

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg')  # the reference's (datasets, sample and align folders)
PHOTO_EXTENSIONS = IMG_EXTENSIONS + ('.bmp', '.webp', '.tif', '.tiff', '.gif')  # --mode translate: one's own photos


class DataError(ValueError):
    """Bad dataset layout or bad images: the message names the folder or file and what to do."""


def listdir(dname, extensions=IMG_EXTENSIONS):
    """Image files under dname (recursive), sorted (the reference's order depends on the file system)."""
    return sorted(str(p) for p in Path(dname).rglob('*') if p.suffix.lower() in extensions and p.is_file())


def list_domains(root, num_domains=None, flag='--train_img_dir'):
    """Sorted domain folders of root with their image files; clear errors for the usual layout mistakes."""
    if not os.path.isdir(root):
        raise DataError(f'{flag}: folder not found: {root}. Expected {root}/<domain>/*.jpg '
                        f'(e.g. data/celeba_hq/train/female); see `bash scripts/download.sh` or --preset demo.')
    domains = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith('.'))
    if not domains:
        raise DataError(f'{flag}: {root} has no domain sub-folders; expected {root}/<domain>/<images>.')
    if num_domains is not None and len(domains) != num_domains:
        raise DataError(f'{flag}: {root} has {len(domains)} domain folders ({", ".join(domains)}) '
                        f'but --num_domains is {num_domains}.')
    files = []
    for d in domains:
        fnames = listdir(os.path.join(root, d))
        if not fnames:
            raise DataError(f'{flag}: domain "{d}" has no images ({os.path.join(root, d)}; '
                            f'looked for {", ".join(IMG_EXTENSIONS)}).')
        files.append(fnames)
    return domains, files


def decode_error(fname):
    """None when fname decodes fully, else 'fname (ErrorType: message)': PIL reads a truncated file's header
    without complaint, so the whole image is decoded."""
    try:
        with Image.open(fname) as img:
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        return f'{fname} ({type(e).__name__}: {e})'
    return None


def check_images(fnames, skip_bad=False):
    """Fully decodes every image once (in threads: PIL releases the GIL while decoding); returns the good ones.
    Bad files are an error naming them, or with skip_bad a warning listing them."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        bad = [b for b in pool.map(decode_error, fnames, chunksize=16) if b is not None]
    if bad and not skip_bad:
        raise DataError(f'{len(bad)} unreadable or truncated image(s): ' + '; '.join(bad[:10]) +
                        ('; ...' if len(bad) > 10 else '') + '. Fix or remove them, or pass --skip_bad_images.')
    if bad:
        warnings.warn(f'--skip_bad_images: dropped {len(bad)} image(s): ' + '; '.join(bad))
        bad_names = {b.split(' (')[0] for b in bad}
        fnames = [f for f in fnames if f not in bad_names]
    return fnames


def load_rgb(fname):
    return Image.open(fname).convert('RGB')


# --------------------------------------------------------------------------------------------------------------------
# training: seeded augmentation and samplers

class TrainTransform:
    """The reference's augmentation with an explicit generator: with probability prob a RandomResizedCrop(img_size,
    scale (0.8, 1), ratio (0.9, 1.1)), then Resize(img_size), horizontal flip with probability 0.5, to [-1, 1]."""

    def __init__(self, img_size, prob, scale=(0.8, 1.0), ratio=(0.9, 1.1)):
        self.img_size, self.prob, self.scale, self.ratio = img_size, prob, scale, ratio

    def _rand(self, g):
        return torch.rand(1, generator=g).item()

    def _crop_params(self, width, height, g):
        # torchvision RandomResizedCrop.get_params, drawing from g
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * self._rand(g))
            aspect_ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * self._rand(g))
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                i = int(torch.randint(0, height - h + 1, (1,), generator=g))
                j = int(torch.randint(0, width - w + 1, (1,), generator=g))
                return i, j, h, w
        in_ratio = width / height  # fallback to a central crop
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img, g):
        size = [self.img_size, self.img_size]
        if self._rand(g) < self.prob:
            i, j, h, w = self._crop_params(img.width, img.height, g)
            img = TF.resized_crop(img, i, j, h, w, size, antialias=True)
        img = TF.resize(img, size, antialias=True)
        if self._rand(g) < 0.5:
            img = TF.hflip(img)
        return TF.normalize(TF.to_tensor(img), [0.5] * 3, [0.5] * 3)


def seeded_generator(*seeds):
    """A CPU torch.Generator seeded by a tuple of non-negative integers (through numpy's SeedSequence, so that nearby
    tuples give unrelated streams)."""
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(list(seeds)).generate_state(1, dtype=np.uint64)[0] & (2 ** 63 - 1)))
    return g


class BalancedInfiniteSampler(data.Sampler):
    """Endless stream of (index, draw number): indices drawn with replacement, weight 1/count of the sample's domain
    (the reference's WeightedRandomSampler), in rounds of len(labels) drawn from a generator seeded by (seed, round).
    `start` skips the first draws, so resuming at step N with batch B starts at start = N * B.

    Under torchrun each rank takes every world_size-th draw (rank, rank + W, ...): the global batch is the same
    stream of samples whatever the world size."""

    def __init__(self, labels, seed, start=0, rank=0, world_size=1):
        labels = np.asarray(labels)
        counts = np.bincount(labels)
        self.weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        self.n = len(labels)
        self.seed, self.start, self.rank, self.world_size = seed, start, rank, world_size

    def __iter__(self):
        pos = self.start + self.rank
        while True:
            rnd, off = divmod(pos, self.n)
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=seeded_generator(self.seed, rnd))
            while off < self.n:
                yield int(idx[off]), pos
                pos += self.world_size
                off += self.world_size
            # continue in the next round(s) at the same stride


class SourceDataset(data.Dataset):
    """(image, label, z_trg, z_trg2): the latent codes are drawn per sample from (seed, draw number) too, so that a
    sample gets the same codes whatever the world size or the number of workers."""

    def __init__(self, fnames, labels, transform, seed, latent_dim=16):
        self.samples, self.targets, self.transform, self.seed = fnames, labels, transform, seed
        self.latent_dim = latent_dim

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        index, draw = key
        img = self.transform(load_rgb(self.samples[index]), seeded_generator(self.seed, 1, draw))
        z = torch.randn(2, self.latent_dim, generator=seeded_generator(self.seed, 5, draw))
        return img, self.targets[index], z[0], z[1]


class ReferenceDataset(data.Dataset):
    """Pairs (image, partner, label): the partner is a fixed random permutation within the domain, drawn once from
    the seed (as the reference does once per run)."""

    def __init__(self, fnames, fnames2, labels, transform, seed):
        self.samples = list(zip(fnames, fnames2))
        self.targets, self.transform, self.seed = labels, transform, seed

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        index, draw = key
        fname, fname2 = self.samples[index]
        img = self.transform(load_rgb(fname), seeded_generator(self.seed, 2, draw))
        img2 = self.transform(load_rgb(fname2), seeded_generator(self.seed, 3, draw))
        return img, img2, self.targets[index]


@functools.lru_cache(maxsize=8)
def _domain_files_cached(root, num_domains, skip_bad, flag, stamp):
    return _domain_files_uncached(root, num_domains, skip_bad, flag)


def _domain_files(root, num_domains, skip_bad, flag):
    """The checked files of each domain; the source and reference loaders share one check (keyed by the folder's
    mtime too, so a changed folder is checked again)."""
    stamp = tuple(os.stat(os.path.join(root, d)).st_mtime_ns for d in sorted(os.listdir(root))) \
        if os.path.isdir(root) else None
    domains, files = _domain_files_cached(root, num_domains, skip_bad, flag, stamp)
    return domains, [list(f) for f in files]


def _domain_files_uncached(root, num_domains, skip_bad, flag):
    domains, files = list_domains(root, num_domains, flag)
    checked = []
    for d, fnames in zip(domains, files):
        good = check_images(fnames, skip_bad)
        if not good:
            raise DataError(f'{flag}: domain "{d}" has no readable images left.')
        checked.append(tuple(good))
    return tuple(domains), tuple(checked)


def get_train_loader(root, which='source', img_size=256, batch_size=8, prob=0.5, num_workers=4, seed=777,
                     start_step=0, num_domains=None, skip_bad_images=False, rank=0, world_size=1,
                     pin_memory=False, latent_dim=16):
    """Endless balanced loader. batch_size is per process; start_step skips the batches of earlier steps."""
    print(f'Preparing DataLoader to fetch {which} images during the training phase...')
    domains, files = _domain_files(root, num_domains, skip_bad_images, '--train_img_dir')
    fnames, labels = [f for fs in files for f in fs], [i for i, fs in enumerate(files) for _ in fs]
    transform = TrainTransform(img_size, prob)
    if which == 'source':
        dataset = SourceDataset(fnames, labels, transform, seed, latent_dim)
    elif which == 'reference':
        rng = np.random.default_rng([seed, 4])
        fnames2 = [f for fs in files for f in [fs[k] for k in rng.permutation(len(fs))]]
        dataset = ReferenceDataset(fnames, fnames2, labels, transform, seed)
    else:
        raise NotImplementedError(which)
    sampler = BalancedInfiniteSampler(labels, seed=seed + (0 if which == 'source' else 1),
                                      start=start_step * batch_size * world_size, rank=rank, world_size=world_size)
    loader = data.DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                             pin_memory=pin_memory, drop_last=True, persistent_workers=num_workers > 0)
    loader.domains = domains
    return loader


class DefaultDataset(data.Dataset):
    def __init__(self, root, transform=None):
        self.samples = listdir(root)
        self.transform = transform
        self.targets = None

    def __getitem__(self, index):
        img = load_rgb(self.samples[index])
        return self.transform(img) if self.transform is not None else img

    def __len__(self):
        return len(self.samples)


IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def eval_transform(img_size, imagenet_normalize=True):
    """The evaluation transform of a PIL image: resize to img_size, then (for Inception) to 299x299, bilinear, and
    ImageNet normalisation; else to [-1, 1]. The one definition: FID of images in memory equals FID of their PNG files
    because both go through it (metrics.fid.inception_inputs)."""
    if imagenet_normalize:
        height, width = 299, 299
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        height, width = img_size, img_size
        mean, std = [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]
    return transforms.Compose([
        transforms.Resize([img_size, img_size]),
        transforms.Resize([height, width]),
        transforms.ToTensor(),
        transforms.Normalize(mean=mean, std=std),
    ])


def get_eval_loader(root, img_size=256, batch_size=32, imagenet_normalize=True, shuffle=True, num_workers=4,
                    drop_last=False):
    """Images of one folder for FID: PIL resize to img_size, then to 299 (bilinear), ImageNet normalisation."""
    print('Preparing DataLoader for the evaluation phase...')
    dataset = DefaultDataset(root, transform=eval_transform(img_size, imagenet_normalize))
    if len(dataset) == 0:
        raise DataError(f'No images found in {root}')
    return data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                           pin_memory=False, drop_last=drop_last)


class FolderDataset(data.Dataset):
    """root/<domain>/<images> with labels, no augmentation."""

    def __init__(self, root, transform, num_domains=None, flag='--val_img_dir'):
        self.domains, files = list_domains(root, num_domains, flag)
        self.samples = [f for fs in files for f in fs]
        self.targets = [i for i, fs in enumerate(files) for _ in fs]
        self.transform = transform

    def __getitem__(self, index):
        return self.transform(load_rgb(self.samples[index])), self.targets[index]

    def __len__(self):
        return len(self.samples)


def get_test_loader(root, img_size=256, batch_size=32, shuffle=True, num_workers=4, num_domains=None,
                    flag='--val_img_dir', seed=777):
    print('Preparing DataLoader for the generation phase...')
    transform = transforms.Compose([
        transforms.Resize([img_size, img_size]),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ])
    dataset = FolderDataset(root, transform, num_domains, flag)
    g = torch.Generator()
    g.manual_seed(seed)
    return data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                           pin_memory=False, generator=g)


class InputFetcher:
    """Endless batches on the device. In 'train' mode also z_trg, z_trg2 ~ N(0, I): from the source loader when it
    provides them (get_train_loader does), else from the global RNG as the reference does."""

    def __init__(self, loader, loader_ref=None, latent_dim=16, mode='', device=torch.device('cpu')):
        self.loader, self.loader_ref = loader, loader_ref
        self.latent_dim, self.mode = latent_dim, mode
        self.device = torch.device(device)
        self.iter = self.iter_ref = None

    def _fetch_inputs(self):
        if self.iter is None:
            self.iter = iter(self.loader)
        try:
            batch = next(self.iter)
        except StopIteration:
            self.iter = iter(self.loader)
            batch = next(self.iter)
        return batch

    def _fetch_refs(self):
        if self.iter_ref is None:
            self.iter_ref = iter(self.loader_ref)
        try:
            x, x2, y = next(self.iter_ref)
        except StopIteration:
            self.iter_ref = iter(self.loader_ref)
            x, x2, y = next(self.iter_ref)
        return x, x2, y

    def _fetch_val_refs(self, n):
        """n references: the next batch of the same loader, as the reference takes them; where that batch is
        shorter (the last of an epoch: 48 images in batches of 32 give 32 and 16), more batches, from the next
        epoch, until there are n (docs/differences.md). Where the next batch is full, the reference's grid."""
        xs, ys, have = [], [], 0
        while have < n:
            x_ref, y_ref, *_ = self._fetch_inputs()
            xs.append(x_ref)
            ys.append(y_ref)
            have += x_ref.size(0)
        if len(xs) == 1 and have == n:
            return xs[0], ys[0]
        return torch.cat(xs)[:n], torch.cat(ys)[:n]

    def __iter__(self):
        return self

    def __next__(self):
        x, y, *zs = self._fetch_inputs()
        if self.mode == 'train':
            x_ref, x_ref2, y_ref = self._fetch_refs()
            if zs:  # drawn per sample by SourceDataset
                z_trg, z_trg2 = zs
            else:
                z_trg = torch.randn(x.size(0), self.latent_dim)
                z_trg2 = torch.randn(x.size(0), self.latent_dim)
            inputs = Munch(x_src=x, y_src=y, y_ref=y_ref, x_ref=x_ref, x_ref2=x_ref2, z_trg=z_trg, z_trg2=z_trg2)
        elif self.mode == 'val':
            x_ref, y_ref = self._fetch_val_refs(x.size(0))
            inputs = Munch(x_src=x, y_src=y, x_ref=x_ref, y_ref=y_ref)
        elif self.mode == 'test':
            inputs = Munch(x=x, y=y)
        else:
            raise NotImplementedError(self.mode)
        nb = self.device.type == 'cuda'
        return Munch({k: v.to(self.device, non_blocking=nb) for k, v in inputs.items()})
