"""The demo's synthetic data: what measure() reads back (colours, shape, place, size) equals what was drawn; content,
domain and style vary independently; the demo never writes into a folder holding someone's images."""
import json
import os

import numpy as np
import pytest
import torch
from munch import Munch
from PIL import Image

from core.data_loader import get_test_loader
from core.demo.data import (DOMAINS, SHADE, TASKS, DemoDataError, content_distance, draw_sample, make_demo_dataset,
                            measure, prepare_demo_data, ring_width)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp('demo') / 'd'), n_train=40, n_val=4, size=32)


def test_measure_reads_back_what_was_drawn(demo):
    loader = get_test_loader(os.path.join(demo, 'train'), img_size=32, batch_size=1000, shuffle=False, num_workers=0)
    x, y = next(iter(loader))
    m = measure(x)
    assert (m.shape == y).all(), m.fill[m.shape != y]           # every shape classified right, none "neither"
    labels = json.load(open(os.path.join(demo, 'labels.json')))
    names = [os.path.relpath(f, demo) for f in loader.dataset.samples]
    fg = torch.tensor([labels[n]['fg'] for n in names]) / 255.0
    bg = torch.tensor([labels[n]['bg'] for n in names]) / 255.0
    assert (m.fg - fg).abs().max() < 1 / 255 and (m.bg - bg).abs().max() < 1 / 255
    # the content: the centre to 0.4 of a pixel, the half-width to half a pixel (32 px), from the blended edges (a
    # triangle's apex is a thin blend, the least exact part)
    centre = torch.tensor([labels[n]['centre'] for n in names])
    half_width = torch.tensor([labels[n]['half_width'] for n in names])
    assert (m.centre - centre).abs().max() * 32 < 0.4
    assert (m.half_width - half_width).abs().max() * 32 < 0.5
    assert [labels[n]['domain'] for n in names] == [DOMAINS[int(k)] for k in y]
    assert m.contrast.min() >= 0.45


def test_content_varies_independently_of_domain_and_style(demo):
    """Place and size spread over the image in both domains and for every colour: content, domain and style
    are drawn independently (what lets a score tell a translation that keeps its source from one that does not)."""
    labels = json.load(open(os.path.join(demo, 'labels.json')))
    train = [v for k, v in labels.items() if k.startswith('train/')]
    for domain in DOMAINS:
        c = torch.tensor([v['centre'] for v in train if v['domain'] == domain])
        h = torch.tensor([v['half_width'] for v in train if v['domain'] == domain])
        assert c.min() < 0.35 and c.max() > 0.65 and h.min() < 0.15 and h.max() > 0.22
    corr = torch.corrcoef(torch.tensor([[v['half_width'], v['centre'][0], v['fg'][0], v['domain'] == DOMAINS[0]]
                                        for v in train], dtype=torch.float64).T)
    assert (corr - torch.eye(4, dtype=torch.float64)).abs().max() < 0.3


def test_the_styles_of_each_palette():
    """--demo_colours light: the 8 shape colours on one light background; palette: the same on 3 backgrounds."""
    from core.demo.data import PALETTE_BG, PALETTE_FG, draw_colours
    for colours, backgrounds in (('light', PALETTE_BG[:1]), ('palette', PALETTE_BG)):
        rng = np.random.default_rng(0)
        drawn = [draw_colours(rng, colours) for _ in range(400)]
        assert {fg for fg, _ in drawn} == set(PALETTE_FG) and {bg for _, bg in drawn} == set(backgrounds)


def test_content_distance_of_the_data():
    a = Munch(centre=torch.tensor([[0.5, 0.5], [0.2, 0.3]]), half_width=torch.tensor([0.2, 0.1]))
    b = Munch(centre=torch.tensor([[0.5, 0.5], [0.5, 0.7]]), half_width=torch.tensor([0.1, 0.1]))
    assert torch.allclose(content_distance(a, b), torch.tensor([0.1, 0.5]))


def test_measure_rejects_what_is_neither_shape():
    flat = torch.zeros(2, 3, 32, 32)
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (measure(flat).shape == -1).all()
    assert (measure(noise).shape == -1).all()
    ring = torch.full((1, 3, 32, 32), -1.0)
    ring[:, :, 8:24, 8:24] = 1
    ring[:, :, 9:23, 9:23] = -1                                  # a square outline: fill about 0.23
    assert measure(ring).shape.tolist() == [-1]


def test_stray_pixels_do_not_move_the_shape():
    x = torch.full((1, 3, 32, 32), -1.0)
    x[:, :, 10:18, 12:20] = 1                                    # an 8x8 square centred at (16, 14)
    x[:, :, 27, 4] = 1                                           # a stray pixel far away
    m = measure(x)
    assert m.shape.tolist() == [DOMAINS.index('square')]
    assert torch.allclose(m.centre * 32, torch.tensor([[16.0, 14.0]])) and abs(m.half_width.item() * 32 - 4) < 1e-5


def test_sizes_shading_and_determinism(tmp_path):
    a, ma = draw_sample(np.random.default_rng(3), 'triangle', 64)
    b, mb = draw_sample(np.random.default_rng(3), 'triangle', 64)
    assert a.size == (64, 64) and a.tobytes() == b.tobytes() and ma == mb
    px = np.asarray(a).astype(int)
    top, bottom = px[0, 0], px[-1, 0]                            # corners: background only
    assert (top - bottom == top[0] - bottom[0]).all() and 1.8 * SHADE < top[0] - bottom[0] <= 2 * SHADE
    assert (np.abs((top + bottom) / 2 - ma.bg) <= 1).all()      # bg is the colour half-way down
    assert (np.abs(px[32, 0] - ma.bg) <= 1).all()
    r = ring_width(64)
    cx, cy = ma.centre
    assert r + 1 <= (min(cx, cy) - ma.half_width) * 64 and (max(cx, cy) + ma.half_width) * 64 <= 64 - r - 1


def test_own_folder_is_reused_and_redrawn_for_other_settings(tmp_path):
    root = str(tmp_path / 'demo')
    make_demo_dataset(root, n_train=3, n_val=1, size=16)
    f = os.path.join(root, 'train', 'square', '0000.png')
    t = os.stat(f).st_mtime_ns
    make_demo_dataset(root, n_train=3, n_val=1, size=16)          # complete, same settings: untouched
    assert os.stat(f).st_mtime_ns == t
    make_demo_dataset(root, n_train=2, n_val=1, size=24)          # ours, other settings: drawn again
    assert sorted(os.listdir(os.path.join(root, 'train', 'square'))) == ['0000.png', '0001.png']
    assert Image.open(f).size == (24, 24)


def test_empty_folder_is_used(tmp_path):
    (tmp_path / 'empty').mkdir()
    make_demo_dataset(str(tmp_path / 'empty'), n_train=1, n_val=1, size=16)
    assert os.path.exists(tmp_path / 'empty' / 'train' / 'square' / '0000.png')


def test_never_writes_beside_someone_s_data(tmp_path):
    """The bug of issue 13: --preset demo --train_img_dir mine/train added circle/ and square/ beside the user's
    two domains (4 domains). Now the user's images are used as given and nothing is written."""
    mine = tmp_path / 'mine'
    for split in ('train', 'val'):
        for d in ('cat', 'dog'):
            (mine / split / d).mkdir(parents=True)
            Image.new('RGB', (8, 8)).save(mine / split / d / '0.png')
    before = sorted(str(p) for p in mine.rglob('*'))
    assert prepare_demo_data(str(mine / 'train'), str(mine / 'val'), 32) is False
    assert sorted(str(p) for p in mine.rglob('*')) == before

    # a folder with other files but no train/ yet: an error naming it, nothing written
    other = tmp_path / 'other'
    other.mkdir()
    (other / 'notes.txt').write_text('mine')
    with pytest.raises(DemoDataError, match=r'other already holds files that the demo did not write \(notes\.txt'):
        prepare_demo_data(str(other / 'train'), str(other / 'val'), 32)
    assert os.listdir(other) == ['notes.txt']
    with pytest.raises(DemoDataError, match='is a file'):
        make_demo_dataset(str(other / 'notes.txt'))

    # missing: drawn, and the demo's default layout is used
    assert prepare_demo_data(str(tmp_path / 'new' / 'train'), str(tmp_path / 'new' / 'val'), 16, n_train=2,
                             n_val=1) is True
    assert sorted(os.listdir(tmp_path / 'new' / 'train')) == list(DOMAINS)


@pytest.mark.parametrize('task', sorted(TASKS))
def test_each_task_reads_back_its_own_data(tmp_path, task):
    """Every task of the family: measure(x, task) reads every shape's kind, place and size right."""
    root = make_demo_dataset(str(tmp_path / task), n_train=40, n_val=1, task=task)
    loader = get_test_loader(os.path.join(root, 'train'), img_size=32, batch_size=1000, shuffle=False, num_workers=0)
    x, y = next(iter(loader))
    m = measure(x, task)
    assert (m.shape == y).all(), (m.fill, m.aspect, m.tilt)
    labels = json.load(open(os.path.join(root, 'labels.json')))
    names = [os.path.relpath(f, root) for f in loader.dataset.samples]
    assert [labels[n]['domain'] for n in names] == [TASKS[task][int(k)] for k in y]
    centre = torch.tensor([labels[n]['centre'] for n in names])
    half_width = torch.tensor([labels[n]['half_width'] for n in names])
    assert (m.centre - centre).abs().max() * 32 < 0.65      # a down-pointing apex: a thin blend at the bottom
    assert (m.half_width - half_width).abs().max() * 32 < 0.55
    if task == 'bars':  # the other kinds are neither bar: squares (aspect 1) and triangles (fill 1/2)
        shapes = make_demo_dataset(str(tmp_path / 'shapes'), n_train=10, n_val=1)
        xs, _ = next(iter(get_test_loader(os.path.join(shapes, 'train'), img_size=32, batch_size=100,
                                          shuffle=False, num_workers=0)))
        assert (measure(xs, 'bars').shape == -1).all()
    if task == 'updown':  # squares point neither way
        square = torch.full((1, 3, 32, 32), -1.0)
        square[:, :, 8:20, 10:22] = 1
        assert measure(square, task).shape.tolist() == [-1]


def test_tasks_draw_the_same_content_and_style():
    """The tasks differ only in the domain: the same seed draws the same colours, place and size in each."""
    a = draw_sample(np.random.default_rng(5), 'square')[1]
    for domain in ('horizontal', 'vertical', 'up', 'down', 'triangle'):
        b = draw_sample(np.random.default_rng(5), domain)[1]
        assert (a.fg, a.bg, a.half_width) == (b.fg, b.bg, b.half_width)
