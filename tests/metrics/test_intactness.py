"""Intactness (metrics/intactness.py): LPIPS to source against the `lpips` package on the same random AlexNet weights,
the landmark shift against hand-made shifts, and both inside --mode eval (INTACT_*.json, the printed summary)."""
import json
import os

import numpy as np
import pytest
import torch
from munch import Munch
from PIL import Image

from core.align import LEFT_EYE, RIGHT_EYE
import metrics.eval as E
import metrics.intactness as I
from metrics.lpips import load_lpips
from scripts.benchmark_eval import write_random_weights
from test_eval import FakeInception, cheap_distance
from test_lpips import package_model


@pytest.fixture
def alexnet_home(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    return write_random_weights(str(tmp_path / 'home'), seed=4, nets=('alexnet',))['alexnet']


def test_lpips_to_source_equals_the_lpips_package(alexnet_home):
    torch.manual_seed(0)
    x_src = torch.rand(3, 3, 48, 48) * 2 - 1
    outs = [torch.rand(3, 3, 48, 48) * 2 - 1 for _ in range(4)]
    theirs = package_model(alexnet_home)
    with torch.no_grad():
        expected = np.mean([theirs(x_src, o).mean().item() for o in outs])
    model = load_lpips('cpu')
    with torch.no_grad():
        got = I.lpips_to_source(model, x_src, outs).item()
        assert got == pytest.approx(expected, rel=1e-5)
        assert I.lpips_to_source(model, x_src, [x_src.clone(), x_src.clone()]).item() == 0  # the identity keeps all


def face_landmarks(n=2, seed=0):
    """(n, 98, 2) landmarks with the eyes 40 px apart (the rest anywhere)."""
    g = torch.Generator().manual_seed(seed)
    lm = torch.rand(n, 98, 2, generator=g) * 100 + 50
    lm[:, LEFT_EYE] = torch.tensor([80.0, 100.0]) + torch.randn(n, len(LEFT_EYE), 2, generator=g)
    lm[:, RIGHT_EYE] = torch.tensor([120.0, 100.0]) + torch.randn(n, len(RIGHT_EYE), 2, generator=g)
    lm[:, RIGHT_EYE] += lm[:, LEFT_EYE].mean(1, keepdim=True) - lm[:, RIGHT_EYE].mean(1, keepdim=True) \
        + torch.tensor([40.0, 0.0])  # centres exactly 40 px apart
    return lm


def test_landmark_shift_by_hand():
    lm = face_landmarks()
    assert torch.allclose(I.inter_ocular(lm), torch.tensor([40.0, 40.0]))
    assert torch.allclose(I.landmark_shift(lm, lm + torch.tensor([3.0, 4.0])), torch.tensor([5 / 40] * 2))
    one = lm.clone()
    one[:, 10, 0] += 98.0  # one landmark moved 98 px: 1 px on average over the 98
    assert torch.allclose(I.landmark_shift(lm, one), torch.tensor([1 / 40] * 2))
    assert torch.equal(I.landmark_shift(lm, lm), torch.zeros(2))
    flat = torch.zeros(1, 98, 2)  # no face found: the eye distance is floored, no division by zero
    assert torch.isfinite(I.landmark_shift(flat, flat + 1)).all()


class ShiftFAN:
    """A FAN stand-in: the landmarks of an image are face_landmarks() moved right by 10 x its mean pixel value."""

    def __init__(self):
        self.base = face_landmarks(1)

    def get_landmark(self, x):
        return self.base.expand(x.size(0), -1, -1) + torch.stack(
            [x.mean(dim=(1, 2, 3)) * 10, torch.zeros(x.size(0))], dim=1)[:, None]


def test_meter_averages_per_batch_then_per_task(alexnet_home):
    meter = I.IntactnessMeter('cpu', fan=ShiftFAN())
    x = torch.zeros(2, 3, 32, 32)  # AlexNet's smallest input
    meter.update(x, [x + 0.2, x + 0.4])  # shifts 2 and 4 px over 40: 0.075
    meter.update(x[:1], [x[:1] - 0.1, x[:1] - 0.1])  # 1 px: 0.025
    values = meter.pop_task('latent', 'a2b')
    assert values['landmark_shift_latent/a2b'] == pytest.approx((0.075 + 0.025) / 2)
    assert values['LPIPS_to_source_latent/a2b'] > 0
    assert meter.pop_task('latent', 'b2a') == {}  # a fresh start
    means = I.with_means({'landmark_shift_latent/a2b': 1.0, 'landmark_shift_latent/b2a': 2.0,
                          'LPIPS_to_source_latent/a2b': 0.5, 'LPIPS_to_source_latent/b2a': 0.25}, 'latent')
    assert means['landmark_shift_latent/mean'] == 1.5 and means['LPIPS_to_source_latent/mean'] == 0.375


class Halve(torch.nn.Module):
    """A generator that returns half of its input: its LPIPS to source is LPIPS(x, x / 2)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, s, masks=None):
        return x * 0.5 + 0 * s.sum()


def test_eval_writes_intactness_for_every_task(tmp_path, monkeypatch, capsys, random_wing):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    alexnet = write_random_weights(str(tmp_path / 'home'), seed=4, nets=('alexnet',))['alexnet']
    monkeypatch.setattr(E, 'load_inception', lambda device, path: FakeInception().to(device))
    from metrics.weights import INCEPTION, cached_path
    open(cached_path(INCEPTION), 'wb').close()  # present; never read (the fake Inception stands in)
    monkeypatch.setattr(E, 'frechet_distance', cheap_distance)
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for d in ('a', 'b'):
            os.makedirs(tmp_path / split / d)
            for i in range(3):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / d / f'{i}.png')
    args = Munch(img_size=32, num_domains=2, latent_dim=4, style_dim=8, w_hpf=0, skip='none', hpf_masks='fan',
                 eval_landmarks=True, wing_path=random_wing, val_batch_size=3, num_outs_per_domain=2, num_workers=0,
                 seed=1, train_img_dir=str(tmp_path / 'train'), val_img_dir=str(tmp_path / 'val'),
                 eval_dir=str(tmp_path / 'out'), fid_cache_dir=str(tmp_path / 'cache'), no_save_eval_images=True,
                 inception_weights=None, lpips_alexnet_weights=None)
    nets = Munch(generator=Halve(), mapping_network=lambda z, y: z.repeat(1, 2))
    E.calculate_metrics(nets, args, 3, 'latent')
    values = json.loads((tmp_path / 'out' / 'INTACT_00003_latent.json').read_text())
    assert list(values) == ['LPIPS_to_source_latent/b2a', 'landmark_shift_latent/b2a',
                            'LPIPS_to_source_latent/a2b', 'landmark_shift_latent/a2b',
                            'LPIPS_to_source_latent/mean', 'landmark_shift_latent/mean']
    theirs = package_model(alexnet)
    from core.data_loader import get_eval_loader
    for src in ('a', 'b'):  # one batch of the 3 val images: LPIPS(x, x / 2) with the package, mean over images
        x = next(iter(get_eval_loader(str(tmp_path / 'val' / src), 32, 3, imagenet_normalize=False, shuffle=False,
                                      num_workers=0)))
        with torch.no_grad():
            expected = theirs(x, x * 0.5).mean().item()
        task = 'a2b' if src == 'a' else 'b2a'
        assert values[f'LPIPS_to_source_latent/{task}'] == pytest.approx(expected, rel=1e-5)
        assert values[f'landmark_shift_latent/{task}'] >= 0
    out = capsys.readouterr().out
    assert 'LPIPS to source' in out and 'landmark shift' in out and 'LPIPS diversity' in out
    row = next(line for line in out.splitlines() if line.startswith('a2b '))
    assert f"{values['LPIPS_to_source_latent/a2b']:.4f}" in row
