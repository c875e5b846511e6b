"""A small two-domain image set the project draws itself, for the quickstart and tests (no downloads).

    make_demo_dataset('expr/demo_data', n_train=200, n_val=16)   # -> {train,val,src,ref}/{circle,square}/*.png

Domain = the shape (circle or square); style = shape colour, background colour and size, which a trained
generator should carry over from a reference image or draw from the latent code.
"""
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DOMAINS = ('circle', 'square')


def draw_sample(rng, domain, size=64):
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    img = Image.new('RGB', (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    box = [cx - r, cy - r, cx + r, cy + r]
    if domain == 'circle':
        draw.ellipse(box, fill=fg)
    else:
        draw.rectangle(box, fill=fg)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def make_demo_dataset(root, n_train=200, n_val=16, size=64, seed=0, n_sample=3):
    """Writes the set unless it is already complete; returns root. src/ref hold n_sample images per domain for
    --mode sample (one batch with both domains)."""
    marker = os.path.join(root, '.complete')
    if os.path.exists(marker):
        return root
    rng = np.random.default_rng(seed)
    for split, n in (('train', n_train), ('val', n_val), ('src', n_sample), ('ref', n_sample)):
        for domain in DOMAINS:
            folder = os.path.join(root, split, domain)
            os.makedirs(folder, exist_ok=True)
            for k in range(n):
                draw_sample(rng, domain, size).save(os.path.join(folder, '%04d.png' % k))
    open(marker, 'w').close()
    print(f'Wrote the demo dataset ({n_train} train + {n_val} val images per domain) to {root}')
    return root
