"""A small two-domain image set the project draws itself, for the quickstart and tests (no downloads), and the
measurements its generator makes possible (what core/demo_score.py scores with).

    make_demo_dataset('expr/demo_data', n_train=500, n_val=16, size=32)  # -> {train,val,src,ref}/{circle,square}/*.png
    m = measure(x)   # x: (N, 3, H, W) in [-1, 1] -> Munch(bg, fg (N, 3) in [0, 1], fill (N,), shape (N,) 0/1, ...)

Domain = the shape: a disc or an axis-aligned square, centred, whose size varies a little (the "content" a
translation keeps). Style = the colours: a shape colour and a background colour drawn far apart in RGB, which a
trained generator should take from a reference image or draw from a latent code. Every image has a thin black frame
(FRAME_FRACTION: why, there).

The folder is written only where it cannot mix with someone's data: a folder that does not exist, an empty one, or
one this function wrote before (it holds the marker file `.stargan_demo`); anything else is an error naming it.
"""
import json
import math
import os

import numpy as np
import torch
from munch import Munch
from PIL import Image, ImageDraw

from core.data_loader import DataError

DOMAINS = ('circle', 'square')
MARKER = '.stargan_demo'  # written first: the folder is ours (its content says which settings drew it)
COMPLETE = '.complete'    # written last: the set is whole
SUPERSAMPLE = 4           # shapes drawn at 4x then downsampled: smooth edges at any size
# Every image has a thin black frame (1 px at 16 and 32 px). Why: G ends in an instance norm (to_rgb), which removes each
# channel's mean and scale; in a flat two-colour image every channel then takes one of two fixed values, so the
# colours G can draw form a discrete set that a short training cannot search (it drew stray pixels and stripes to
# shift the statistics, and one colour per domain). A third region of fixed colour gives every channel a level to
# be measured against: autoencoding through the style code, the colour error after 900 steps fell from 0.11 to 0.04.
FRAME_FRACTION = 1 / 32
FRAME_COLOUR = (0, 0, 0)
MIN_COLOUR_DISTANCE = 0.6  # between shape and background colour (Euclidean, RGB in [0, 1]): always separable
# a disc fills pi/4 = 0.785 of its bounding box, a square all of it; the data measure 0.76-0.85 and 0.99-1 at 32 px,
# 0.70-0.88 and 0.97-1 at 16 px
FILL_THRESHOLD = (math.pi / 4 + 1) / 2  # 0.89: circle below, square above
MIN_FILL = 0.65                         # below: neither shape (a blob, noise, a ring)
MIN_CONTRAST = 0.25                     # below: no shape at all (the data's contrast is >= 0.6)


class DemoDataError(DataError):
    """The demo would write into a folder that is not its own."""


# the shape colours: saturated hues; the backgrounds: neutrals. A few distinct styles that a short training run can
# tell apart and a person can name ("red on white"), rather than a continuum of muddy colours
PALETTE_FG = ((230, 25, 25), (30, 170, 40), (30, 60, 230), (245, 200, 0), (200, 30, 200), (0, 190, 210),
              (250, 120, 0), (120, 40, 160))
PALETTE_BG = ((250, 250, 250), (20, 20, 20), (128, 128, 128))


def draw_colours(rng, colours='palette'):
    """(fg, bg) as uint8 RGB triples at least MIN_COLOUR_DISTANCE apart: from the palettes above, or uniform over
    RGB with colours='uniform'."""
    while True:
        if colours == 'palette':
            fg = np.array(PALETTE_FG[rng.integers(len(PALETTE_FG))])
            bg = np.array(PALETTE_BG[rng.integers(len(PALETTE_BG))])
        else:
            fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        if np.linalg.norm((fg - bg) / 255.0) >= MIN_COLOUR_DISTANCE:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def draw_sample(rng, domain, size=32, colours='palette'):
    """One image and what was drawn: Munch(domain, fg, bg (uint8 RGB), half_width (fraction of the image))."""
    fg, bg = draw_colours(rng, colours)
    # a disc needs to be a little larger than a square to read as the same size
    half = rng.uniform(0.24, 0.34) * (1.08 if domain == 'circle' else 1.0)
    big = size * SUPERSAMPLE
    img = Image.new('RGB', (big, big), bg)
    draw = ImageDraw.Draw(img)
    c, r = big / 2, half * big
    box = [c - r, c - r, c + r - 1, c + r - 1]
    if domain == 'circle':
        draw.ellipse(box, fill=fg)
    else:
        draw.rectangle(box, fill=fg)
    img = img.resize((size, size), Image.BOX)
    ImageDraw.Draw(img).rectangle([0, 0, size - 1, size - 1], outline=FRAME_COLOUR, width=frame_width(size))
    return img, Munch(domain=domain, fg=fg, bg=bg, half_width=round(half, 4))


def frame_width(size):
    """The frame's width in pixels for an image of side size."""
    return max(1, round(size * FRAME_FRACTION))


def _check_target(root):
    """Refuses a root holding anything but an earlier demo set (item: the demo never writes into someone's data)."""
    if not os.path.exists(root):
        return
    if not os.path.isdir(root):
        raise DemoDataError(f'demo data: {root} is a file, not a folder; the demo writes its images into a folder '
                            f'of its own (remove it or give --train_img_dir a new folder)')
    if os.path.exists(os.path.join(root, MARKER)) or not os.listdir(root):
        return
    raise DemoDataError(
        f'demo data: {root} already holds files that the demo did not write ({", ".join(sorted(os.listdir(root))[:5])}'
        f'...); the demo draws its images only into a missing or empty folder or its own earlier one. With '
        f'--preset demo leave --train_img_dir/--val_img_dir at their defaults (expr/demo_data/...), or give new '
        f'folders, or train on your own data without --preset demo.')


def make_demo_dataset(root, n_train=500, n_val=16, size=32, seed=0, n_sample=4, colours='palette'):
    """Writes root/{train,val,src,ref}/{circle,square}/NNNN.png and root/labels.json (what was drawn, per file)
    unless the same set is already complete; returns root. src/ref hold n_sample images per domain for
    --mode sample. Raises DemoDataError when root holds anything the demo did not write."""
    settings = dict(n_train=n_train, n_val=n_val, size=size, seed=seed, n_sample=n_sample, colours=colours,
                    version=3)
    _check_target(root)
    marker, complete = os.path.join(root, MARKER), os.path.join(root, COMPLETE)
    if os.path.exists(complete) and os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == settings:
                return root
    os.makedirs(root, exist_ok=True)
    with open(marker, 'w') as f:
        json.dump(settings, f)
    if os.path.exists(complete):
        os.remove(complete)
    rng = np.random.default_rng(seed)
    labels = {}
    for split, n in (('train', n_train), ('val', n_val), ('src', n_sample), ('ref', n_sample)):
        for domain in DOMAINS:
            folder = os.path.join(root, split, domain)
            os.makedirs(folder, exist_ok=True)
            for old in os.listdir(folder):  # an earlier demo set with other settings (the marker says it is ours)
                if old.endswith('.png'):
                    os.remove(os.path.join(folder, old))
            for k in range(n):
                img, meta = draw_sample(rng, domain, size, colours)
                name = '%s/%s/%04d.png' % (split, domain, k)
                img.save(os.path.join(root, name))
                labels[name] = meta
    with open(os.path.join(root, 'labels.json'), 'w') as f:
        json.dump(labels, f, indent=0, sort_keys=True)
    open(complete, 'w').close()
    print(f'Wrote the demo dataset ({n_train} train + {n_val} val images per domain, {size}x{size}) to {root}')
    return root


@torch.no_grad()
def measure(x):
    """What the generator of this data set knows, read back from images (N, 3, H, W) in [-1, 1]:

    Everything is read inside the frame (frame_width pixels at each edge are left out):
    - bg: the background colour, the median of the four 2x2 corner patches (a shape never reaches the corners);
    - mask: the foreground, pixels farther from bg than half the largest such distance in the image;
    - fg: the shape colour, the median colour of the mask's pixels (bg where the mask is empty);
    - fill: the mask's area inside its bounding box over the box's area, the box spanning the rows and columns that
      hold at least 20% of the fullest row's (column's) mask pixels, so that stray pixels do not stretch it (a disc:
      pi/4 = 0.785, a square: 1; an empty mask: 0);
    - shape: the index into DOMAINS: 1 (square) where fill >= FILL_THRESHOLD (0.89), 0 (circle) where fill is in
      [MIN_FILL, FILL_THRESHOLD) = [0.65, 0.89); -1 (neither) below 0.65 or where contrast < MIN_CONTRAST (0.25);
    - contrast: the largest distance to bg (near 0 for a blank image, >= 0.6 for the data).
    Colours are RGB in [0, 1]."""
    img = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    f = frame_width(img.size(2))
    img = img[:, :, f:-f, f:-f]
    N, _, H, W = img.shape
    corners = torch.cat([img[:, :, :2, :2], img[:, :, :2, -2:], img[:, :, -2:, :2], img[:, :, -2:, -2:]],
                        dim=2).flatten(2)                                           # (N, 3, 16)
    bg = corners.median(dim=2).values                                               # (N, 3)
    dist = (img - bg[:, :, None, None]).norm(dim=1)                                 # (N, H, W)
    contrast = dist.flatten(1).max(dim=1).values
    mask = dist > 0.5 * contrast[:, None, None]
    fg, fill = bg.clone(), torch.zeros(N)
    for n in range(N):
        m = mask[n]
        if contrast[n] < 1e-3 or not m.any():
            continue
        fg[n] = img[n][:, m].median(dim=1).values
        # the box spans the rows and columns holding at least 20% of the fullest one's mask pixels: a few stray
        # pixels do not stretch it, while a disc's flat top (a third of its width at this threshold) stays in
        rows, cols = m.sum(1), m.sum(0)
        rows, cols = (rows >= 0.2 * rows.max()).nonzero()[:, 0], (cols >= 0.2 * cols.max()).nonzero()[:, 0]
        y0, y1, x0, x1 = rows.min(), rows.max(), cols.min(), cols.max()
        box = (y1 - y0 + 1) * (x1 - x0 + 1)
        inside = m[y0:y1 + 1, x0:x1 + 1]
        fill[n] = inside.sum().float() / box
    shape = torch.where(fill >= FILL_THRESHOLD, 1, 0)
    shape[(fill < MIN_FILL) | (contrast < MIN_CONTRAST)] = -1
    return Munch(bg=bg, fg=fg, mask=mask, fill=fill, shape=shape, contrast=contrast)


def prepare_demo_data(train_img_dir, val_img_dir, size, **kw):
    """For --preset demo: draws the set into the common parent of train_img_dir and val_img_dir when that folder is
    missing, empty or the demo's own, and returns True. When train_img_dir already holds someone's images (a folder
    the demo did not write), draws nothing and returns False: the demo settings then train on those images as
    given. Anything else (the parent holds other files) is a DemoDataError naming the folder."""
    root = os.path.dirname(os.path.normpath(train_img_dir))
    ours = os.path.exists(os.path.join(root, MARKER))
    if not ours and os.path.isdir(train_img_dir) and os.listdir(train_img_dir):
        print(f'--preset demo: {train_img_dir} holds images the demo did not draw; training on them as given '
              f'(no synthetic data written, no demo score)')
        return False
    if os.path.dirname(os.path.normpath(val_img_dir)) != root:
        raise DemoDataError(f'demo data: --train_img_dir {train_img_dir} and --val_img_dir {val_img_dir} must be '
                            f'the train/ and val/ folders of one demo folder (default expr/demo_data)')
    make_demo_dataset(root, size=size, **kw)
    return True
