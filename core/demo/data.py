"""A small two-domain image set the project draws itself, for the quickstart and tests (no downloads), and the
measurements its drawer makes possible (what core/demo/score.py scores with).

    make_demo_dataset('expr/demo_data', n_train=500, n_val=16, size=32)  # -> {train,val,src,ref}/{square,triangle}/*.png
    make_demo_dataset('expr/demo_data_bars', task='bars')                 # -> .../{horizontal,vertical}/*.png
    m = measure(x)   # x: (N, 3, H, W) in [-1, 1] -> Munch(fg, bg, centre, half_width, fill, shape, ...)
    m = measure(x, 'bars')  # shape: 0 horizontal, 1 vertical, -1 neither

Each image shows one shape on a shaded background, and three things about it vary independently:
- content, what a translation must keep: where the shape is and how big (its centre anywhere in the middle of the
  image, its half-width from 1/8 to 1/4 of the side);
- domain, what the target domain changes: the kind of shape, a square or an upright triangle (which fills half of
  its bounding box: the two differ in a quarter of the box at each top corner, which a person sees at a glance and
  a small generator learns to draw; a disc differs from a square only in four thin corners);
- style, what a reference or a latent code gives: the shape's colour, one of 8 saturated colours, on the light
  neutral background (colours='palette': on one of 3 neutral backgrounds, light, grey or dark; docs/demo.md says
  why the demo keeps one: the style encoder learns only from G's outputs, which keep a light background in a short
  run, so the styles of grey and dark references were outside what G was trained on).
The background is shaded from light at the top to dark at the bottom (why: SHADE).
That is the task 'shapes'; TASKS holds the family (--demo_task), which differs only in what the domain changes
(bars lying or standing, a triangle pointing down or up), and measure(x, task) reads each task's kind of shape.

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
from scipy import ndimage

from core.data_loader import DataError

# the kinds of shape the drawer knows, with the share of its bounding box each fills; DOMAINS: the demo's two
SHAPE_FILL = {'circle': math.pi / 4, 'square': 1.0, 'triangle': 0.5}
DOMAINS = ('square', 'triangle')
# The family of tasks (--demo_task): what the two domains differ in, each pair of domains in sorted order (the order
# of the data loader's folders). Content (place, size) and style (colours) are drawn the same way in every task.
# - shapes: a square or an upright triangle (the share of the bounding box the shape fills: 1 or 1/2);
# - bars: a bar lying or standing (the aspect of its bounding box: 2:1 or 1:2; both fill their box);
# - updown: a triangle pointing down or up (where its mass sits in its box: above or below the middle).
TASKS = {'shapes': DOMAINS, 'bars': ('horizontal', 'vertical'), 'updown': ('down', 'up')}
BAR_ASPECT = 2.0      # a bar's long side over its short side
# A bar's half-length and half-thickness over the drawn half-width (the mean of the two: the content is the same
# number in every task, and the half-width measure() reads back, (width + height) / 4, is the drawn one)
BAR_HALVES = (2 * BAR_ASPECT / (BAR_ASPECT + 1), 2 / (BAR_ASPECT + 1))
MIN_BAR_ASPECT = 1.4  # measured aspect (long over short) below which a shape is no bar (a square, a blob)
MIN_BAR_FILL = 0.85   # a bar fills its box (the data: 1.0); a disc or an ellipse fills pi/4
MIN_TILT = 0.08       # |centre of mass - middle of the box| / height below which a triangle points neither way
#                       (the data: about 1/6; a square or a disc: 0)
MARKER = '.stargan_demo'  # written first: the folder is ours (its content says which settings drew it)
COMPLETE = '.complete'    # written last: the set is whole
SUPERSAMPLE = 4           # shapes drawn at 4x then downsampled: smooth edges at any size
# The background's brightness falls linearly from top to bottom by 2 * SHADE (of the [0, 255] range). Why: G ends in
# an instance norm (to_rgb), which removes each channel's mean and scale; in a flat two-colour image every channel
# then takes one of two fixed values, so the colours G can draw form a discrete set that a short training cannot
# search (G drew stray pixels and stripes to shift the statistics). A continuum of levels gives every colour a place.
SHADE = 30
# The shape's half-width and the position of its centre, as fractions of the side. The shape keeps RING_FRACTION of
# the side (plus a pixel) clear at every edge: measure() reads the background from that ring.
HALF_WIDTH = (1 / 8, 1 / 4)
RING_FRACTION = 1 / 16
MIN_COLOUR_DISTANCE = 0.6  # between shape and background colour (Euclidean, RGB in [0, 1]): always separable
FILL_MARGIN = 0.15   # a fill this far below the least-filling kind of DOMAINS: neither shape (a blob, noise, a ring)
MIN_CONTRAST = 0.25                     # below: no shape at all (the data's contrast is >= 0.45)


class DemoDataError(DataError):
    """The demo would write into a folder that is not its own."""


# the shape colours: saturated hues; the backgrounds: neutrals (their brightness leaves room for the shading). A few
# distinct styles that a short training run can tell apart and a person can name ("red on white")
PALETTE_FG = ((230, 25, 25), (30, 170, 40), (30, 60, 230), (245, 200, 0), (200, 30, 200), (0, 190, 210),
              (250, 120, 0), (120, 40, 160))
PALETTE_BG = ((222, 222, 222), (35, 35, 35), (128, 128, 128))


def draw_colours(rng, colours='light'):
    """(fg, bg) as uint8 RGB triples at least MIN_COLOUR_DISTANCE apart: from the palettes above, the shape colours
    on the light background alone with colours='light', or uniform over RGB with colours='uniform'. bg is the
    background's colour half-way down (SHADE above it at the top)."""
    while True:
        if colours in ('palette', 'light'):
            fg = np.array(PALETTE_FG[rng.integers(len(PALETTE_FG))])
            bg = np.array(PALETTE_BG[rng.integers(len(PALETTE_BG)) if colours == 'palette' else 0])
        else:
            fg, bg = rng.integers(0, 256, 3), rng.integers(SHADE, 256 - SHADE, 3)
        if np.linalg.norm((fg - bg) / 255.0) >= MIN_COLOUR_DISTANCE:
            return tuple(int(v) for v in fg), tuple(int(v) for v in bg)


def ring_width(size):
    """The width in pixels of the border ring that holds only background (where measure() reads it)."""
    return max(1, round(size * RING_FRACTION))


def shaded_background(size, bg):
    """(size, size, 3) uint8: bg at mid-height, SHADE brighter at the top and SHADE darker at the bottom."""
    t = (np.arange(size) + 0.5) / size                              # 0 at the top, 1 at the bottom
    rows = np.asarray(bg, np.float64)[None, :] + SHADE * (1 - 2 * t)[:, None]
    return np.repeat(np.clip(np.round(rows), 0, 255).astype(np.uint8)[:, None], size, axis=1)


def half_extents(domain, half_width):
    """The half-width and half-height of the shape's bounding box (fractions of the side): a square box of
    half_width, except for bars, whose two halves average half_width."""
    long, short = (h * half_width for h in BAR_HALVES)
    return {'horizontal': (long, short), 'vertical': (short, long)}.get(domain, (half_width, half_width))


def draw_shape(domain, fg, bg, centre, half_width, size=32):
    """A PIL image of side size: the shape of domain (a name in TASKS) in colour fg (uint8 RGB) with its centre (x, y)
    and half-width (fractions of the side) on the shaded background of colour bg."""
    big = size * SUPERSAMPLE
    img = Image.fromarray(shaded_background(size, bg)).resize((big, big), Image.NEAREST)
    (cx, cy), (hx, hy) = centre, half_extents(domain, half_width)
    box = [(cx - hx) * big, (cy - hy) * big, (cx + hx) * big - 1, (cy + hy) * big - 1]
    draw = ImageDraw.Draw(img)
    if domain == 'circle':
        draw.ellipse(box, fill=tuple(fg))
    elif domain in ('square', 'horizontal', 'vertical'):
        draw.rectangle(box, fill=tuple(fg))
    elif domain == 'down':  # the upright triangle upside down
        draw.polygon([((box[0] + box[2]) / 2, box[3]), (box[0], box[1]), (box[2], box[1])], fill=tuple(fg))
    else:  # triangle, up: an upright isosceles triangle filling half of the box
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=tuple(fg))
    return img.resize((size, size), Image.BOX)


def draw_sample(rng, domain, size=32, colours='light'):
    """One image and what was drawn: Munch(domain, fg, bg (uint8 RGB), centre (x, y), half_width (fractions of the
    side: the half-width of the shape's bounding box))."""
    fg, bg = draw_colours(rng, colours)
    half = rng.uniform(*HALF_WIDTH)
    clear = (ring_width(size) + 1) / size + max(half_extents(domain, half))  # the shape keeps off the ring
    cx, cy = rng.uniform(clear, 1 - clear, 2)
    img = draw_shape(domain, fg, bg, (cx, cy), half, size)
    return img, Munch(domain=domain, fg=fg, bg=bg, centre=(round(cx, 4), round(cy, 4)), half_width=round(half, 4))


def _check_target(root):
    """Refuses a root holding anything but an earlier demo set (the demo never writes into someone's data)."""
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


def make_demo_dataset(root, n_train=500, n_val=16, size=32, seed=0, n_sample=4, colours='light', task='shapes'):
    """Writes root/{train,val,src,ref}/{square,triangle}/NNNN.png (the domains of task, TASKS) and root/labels.json
    (what was drawn, per file) unless the same set is already complete; returns root. src/ref hold n_sample images
    per domain for --mode sample. Raises DemoDataError when root holds anything the demo did not write."""
    settings = dict(n_train=n_train, n_val=n_val, size=size, seed=seed, n_sample=n_sample, colours=colours,
                    version=4)
    if task != 'shapes':  # the first task's marker as before: its folders are not redrawn
        settings['task'] = task
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
        for domain in TASKS[task]:
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
    print(f'Wrote the demo dataset ({task}: {" / ".join(TASKS[task])}; {n_train} train + {n_val} val images per '
          f'domain, {size}x{size}) to {root}')
    return root


def _ring_background(img):
    """The shaded background under every pixel: per image and channel, the plane a + b*x + c*y fitted (least
    squares) to the border ring of ring_width pixels; (N, 3, H, W)."""
    N, C, H, W = img.shape
    r = ring_width(H)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing='ij')
    ring = torch.ones(H, W, dtype=torch.bool)
    ring[r:H - r, r:W - r] = False
    design = torch.stack([torch.ones(H, W), xx, yy], dim=-1)                      # (H, W, 3)
    coef = torch.linalg.lstsq(design[ring], img.flatten(2)[:, :, ring.flatten()].reshape(N * C, -1).T).solution
    return (design.reshape(-1, 3) @ coef).T.reshape(N, C, H, W)


@torch.no_grad()
def measure(x, task='shapes'):
    """What the drawer of this data set knows, read back from images (N, 3, H, W) in [-1, 1] (colours RGB in [0, 1],
    places and sizes as fractions of the side):
    - bg: the background colour, the mean of the border ring (ring_width pixels, where no shape reaches); the shading
      is read as the plane fitted to that ring;
    - mask: the shape, the largest connected part of the pixels farther from the fitted background than half the
      largest such distance (so that stray pixels elsewhere are not the shape);
    - fg: the shape colour, the median colour of the mask's pixels (bg where the mask is empty);
    - each pixel's coverage by the shape (0-1, read from its colour between the background and fg: edge pixels are
      blends), near the mask: centre (N, 2) the centre (x, y) of the bounding box, from the largest coverage of each
      column and row (not the centre of mass, which a triangle has below its middle); half_width (N,) half the mean of
      the shape's width and height (the sums of the largest coverage of each column and row); fill the coverage
      over width times height (a square: 1, a triangle: 1/2; an empty mask: 0);
    - shape: the index into DOMAINS of the kind whose fill (SHAPE_FILL: square 1, triangle 0.5, disc 0.785) is the
      nearest (the data measure 1.0 and 0.53-0.62 at 32 px); -1 (neither) where fill is FILL_MARGIN (0.15) below the
      least-filling kind, where contrast < MIN_CONTRAST (0.25), or where the shape reaches into the border ring (the
      data's shapes never do: noise, a stripe, a frame);
    - contrast: the largest distance to the background (near 0 for a blank image);
    - aspect: width over height of the box; tilt: the coverage's centre of mass below the middle of the box, over
      the height (an upright triangle about +1/6, one pointing down -1/6, a square 0);
    - for the other tasks (TASKS) shape is the index into the task's domains: bars, the longer side of the box
      (horizontal, vertical) of a shape filling its box (fill >= MIN_BAR_FILL) whose aspect is at least
      MIN_BAR_ASPECT either way; updown, the sign of tilt (down: < -MIN_TILT, up: > MIN_TILT) of a shape whose fill is
      within 2 * FILL_MARGIN (0.3) of a triangle's 1/2; -1 otherwise, and as above (contrast, border ring)."""
    img = ((x.detach().float().cpu() + 1) / 2).clamp(0, 1)
    N, _, H, W = img.shape
    r = ring_width(H)
    ring = torch.ones(H, W, dtype=torch.bool)
    ring[r:H - r, r:W - r] = False
    bg = img[:, :, ring].mean(dim=2)                                                # (N, 3)
    background = _ring_background(img)                                              # (N, 3, H, W)
    dist = (img - background).norm(dim=1)                                           # (N, H, W)
    contrast = dist.flatten(1).max(dim=1).values
    mask = dist > 0.5 * contrast[:, None, None]
    fg, fill, off_ring = bg.clone(), torch.zeros(N), torch.zeros(N, dtype=torch.bool)
    yy, xx = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing='ij')
    centre, half_width = torch.full((N, 2), 0.5), torch.zeros(N)
    aspect, tilt = torch.ones(N), torch.zeros(N)
    for n in range(N):
        if contrast[n] < 1e-3:
            continue
        # the shape is the largest 8-connected part of the mask: stray pixels elsewhere do not stretch its box
        parts, count = ndimage.label(mask[n].numpy(), structure=np.ones((3, 3)))
        if count == 0:
            continue
        m = torch.from_numpy(parts == 1 + np.bincount(parts.ravel())[1:].argmax())
        mask[n] = m
        off_ring[n] = not m[ring].any()
        fg[n] = img[n][:, m].median(dim=1).values
        # each pixel's coverage by the shape, read from its colour between the background and fg (edge pixels are
        # blends), within the shape's part grown by a pixel: extents, area and centre to a fraction of a pixel
        coverage = (dist[n] / (fg[n][:, None, None] - background[n]).norm(dim=0).clamp(min=1e-3)).clamp(0, 1)
        coverage *= torch.from_numpy(ndimage.binary_dilation(m.numpy(), structure=np.ones((3, 3))))
        width, height = coverage.max(0).values.sum(), coverage.max(1).values.sum()
        fill[n] = coverage.sum() / (width * height)
        # the centre of the bounding box (not the centre of mass, which a triangle has below its middle)
        cols, rows = coverage.max(0).values, coverage.max(1).values
        centre[n] = torch.stack([(cols * xx[0]).sum() / width, (rows * yy[:, 0]).sum() / height])
        half_width[n] = (width / W + height / H) / 4
        aspect[n] = width / height
        tilt[n] = ((coverage * yy).sum() / coverage.sum().clamp(min=1e-6) - centre[n, 1]) * H / height
    if task == 'shapes':
        shape = classify(fill)
        least = min(SHAPE_FILL[d] for d in DOMAINS) - FILL_MARGIN
        bad = fill < least
    elif task == 'bars':
        shape = (aspect < 1).long()                                  # 0 horizontal, 1 vertical
        bad = (fill < MIN_BAR_FILL) | (torch.maximum(aspect, 1 / aspect) < MIN_BAR_ASPECT)
    elif task == 'updown':
        shape = (tilt > 0).long()                                    # 0 down, 1 up
        bad = ((fill - SHAPE_FILL['triangle']).abs() > 2 * FILL_MARGIN) | (tilt.abs() < MIN_TILT)
    else:
        raise ValueError(f'unknown demo task {task!r}: one of {", ".join(TASKS)}')
    shape[bad | (contrast < MIN_CONTRAST) | ~off_ring] = -1
    return Munch(bg=bg, fg=fg, mask=mask, fill=fill, shape=shape, contrast=contrast, centre=centre,
                 half_width=half_width, aspect=aspect, tilt=tilt)


def classify(fill):
    """The index into DOMAINS of the shape whose fill (SHAPE_FILL) is nearest to each measured fill (N,)."""
    expected = torch.tensor([SHAPE_FILL[d] for d in DOMAINS])
    return (fill[:, None] - expected[None]).abs().argmin(dim=1)


def content_distance(a, b):
    """How far apart the content of two sets of measured images is (N,): the distance between the shapes' centres
    plus the difference of their half-widths, as fractions of the side. a, b: Munch(centre, half_width)."""
    return (a.centre - b.centre).norm(dim=1) + (a.half_width - b.half_width).abs()


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
