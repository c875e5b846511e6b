"""The demo's synthetic data: what measure() reads back equals what was drawn; the demo never writes into a folder
holding someone's images (issue 13, item 7)."""
import json
import os

import pytest
import torch
from PIL import Image

from core.data_loader import get_test_loader
from core.demo_data import (DOMAINS, DemoDataError, draw_sample, frame_width, make_demo_dataset, measure,
                            prepare_demo_data)


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
    assert [labels[n]['domain'] for n in names] == [DOMAINS[int(k)] for k in y]
    assert m.contrast.min() >= 0.6


def test_frame_width_scales_with_the_image():
    assert [frame_width(s) for s in (16, 32, 64, 128)] == [1, 1, 2, 4]


def test_measure_rejects_what_is_neither_shape():
    flat = torch.zeros(2, 3, 32, 32)
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (measure(flat).shape == -1).all()
    assert (measure(noise).shape == -1).all()
    ring = torch.full((1, 3, 32, 32), -1.0)
    ring[:, :, 8:24, 8:24] = 1
    ring[:, :, 11:21, 11:21] = -1                                # a hollow square: fill about 0.6
    assert measure(ring).shape.tolist() == [-1]


def test_sizes_and_determinism(tmp_path):
    import numpy as np
    a, ma = draw_sample(np.random.default_rng(3), 'circle', 64)
    b, mb = draw_sample(np.random.default_rng(3), 'circle', 64)
    assert a.size == (64, 64) and a.tobytes() == b.tobytes() and ma == mb
    px = np.asarray(a)
    for edge in (px[:2], px[-2:], px[:, :2], px[:, -2:]):      # the black frame, 2 px at 64 px
        assert (edge == 0).all()
    assert (px[2:4, 2:4] == ma.bg).all()                        # the background just inside it


def test_own_folder_is_reused_and_redrawn_for_other_settings(tmp_path):
    root = str(tmp_path / 'demo')
    make_demo_dataset(root, n_train=3, n_val=1, size=16)
    f = os.path.join(root, 'train', 'circle', '0000.png')
    t = os.stat(f).st_mtime_ns
    make_demo_dataset(root, n_train=3, n_val=1, size=16)          # complete, same settings: untouched
    assert os.stat(f).st_mtime_ns == t
    make_demo_dataset(root, n_train=2, n_val=1, size=24)          # ours, other settings: drawn again
    assert sorted(os.listdir(os.path.join(root, 'train', 'circle'))) == ['0000.png', '0001.png']
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
