"""The demo's score on stand-in networks whose answer is known: an oracle that draws the target shape in the
reference's colours where the source's shape is, the identity, the oracle with the colours swapped, and one that
replaces the source by the reference (the reference's place and size: what "ignoring the source" scores)."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from munch import Munch

from conftest import tiny_args
from core.demo.data import DOMAINS, draw_shape, make_demo_dataset, measure
from core.demo.score import load_val, score_demo, score_translations


def draw(shape, fg, bg, centre, half_width, size=32):
    """The data's own drawing of a shape (an index into DOMAINS) in colours fg, bg (RGB in [0, 1]) at centre
    with half_width (fractions of the side) -> (3, size, size) in [-1, 1]."""
    rgb = lambda c: tuple(int(round(255 * float(v))) for v in c)  # noqa: E731
    img = draw_shape(DOMAINS[shape], rgb(fg), rgb(bg), centre.tolist(), float(half_width), size)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1).float() / 127.5 - 1


class Oracle(nn.Module):
    """style = (fg, bg, domain, the reference's centre and half-width) read from the reference (or drawn from z); the
    generator draws that shape in those colours where the source's shape is and as big (content kept), or where the
    reference's is (replace: the reference's content), with the colours swapped when swap is set."""

    def __init__(self, swap=False, identity=False, replace=False):
        super().__init__()
        self.swap, self.identity, self.replace = swap, identity, replace

        def style_encoder(x, y):
            m = measure(x)
            return torch.cat([m.fg, m.bg, y[:, None].float(), m.centre, m.half_width[:, None]], 1)
        self.style_encoder = style_encoder
        self.mapping_network = lambda z, y: torch.cat([torch.sigmoid(3 * z[:, :6]), y[:, None].float(),
                                                       torch.full((len(z), 3), 0.5)], 1)

    def generator(self, x, s, masks=None):
        if self.identity:
            return x.clone()
        fg, bg = (s[:, 3:6], s[:, :3]) if self.swap else (s[:, :3], s[:, 3:6])
        m = measure(x)
        centre, half = (s[:, 7:9], s[:, 9]) if self.replace else (m.centre, m.half_width)
        return torch.stack([draw(int(s[n, 6]), fg[n], bg[n], centre[n], half[n], x.size(-1))
                            for n in range(x.size(0))])


@pytest.fixture(scope='module')
def val(tmp_path_factory):
    root = make_demo_dataset(str(tmp_path_factory.mktemp('score') / 'd'), n_train=1, n_val=4, size=32)
    return root, load_val(os.path.join(root, 'val'), 32, 'cpu')


def test_oracle_scores_perfectly(val):
    _, (x, y) = val
    s = score_translations(Oracle(), x, y, x, y, latent_dim=16)
    assert s['domain_accuracy'] == 1.0 and s['latent_domain_accuracy'] == 1.0
    assert s['style_error'] < 0.01                       # the reference's colours (up to anti-aliasing)
    assert 0.2 < s['style_error_chance'] < 0.5
    assert s['style_error_to_source'] > 0.15              # not the source's
    assert s['latent_diversity'] > 0.15                   # different codes, different colours
    assert s['content_error'] < 0.02 and s['latent_content_error'] < 0.02   # the source's place and size
    assert 0.15 < s['content_error_chance'] < 0.45
    assert s['num_reference_translations'] == 2 * 4 * 4  # each of 8 sources x the 4 references of the other domain
    assert s['num_latent_translations'] == 8 * 8


def test_identity_scores_zero_and_keeps_the_source_colours(val):
    _, (x, y) = val
    s = score_translations(Oracle(identity=True), x, y, x, y, latent_dim=16)
    assert s['domain_accuracy'] == 0.0 and s['latent_domain_accuracy'] == 0.0
    assert s['style_error_to_source'] < 1e-6 and s['latent_diversity'] < 1e-6
    assert abs(s['style_error'] - s['style_error_chance']) < 0.15
    assert s['content_error'] < 1e-6 and s['latent_content_error'] < 1e-6


def test_replacing_the_source_scores_the_content_chance_level(val):
    """Drawing the reference's shape where the reference has it: right domain and colours, but the content error
    is the ignore-the-source level (content_error_chance, computed from the references themselves)."""
    _, (x, y) = val
    s = score_translations(Oracle(replace=True), x, y, x, y, latent_dim=16)
    assert s['domain_accuracy'] == 1.0 and s['style_error'] < 0.01
    assert abs(s['content_error'] - s['content_error_chance']) < 0.02


def test_swapped_colours_give_a_large_style_error(val):
    _, (x, y) = val
    s = score_translations(Oracle(swap=True), x, y, x, y, latent_dim=16)
    assert s['domain_accuracy'] == 1.0               # shapes are right...
    assert s['style_error'] > 0.25                   # ...colours are not: |fg - bg| >= 0.6 (Euclidean) apart


def test_score_demo_writes_json(val, tmp_path):
    root, _ = val
    args = tiny_args(val_img_dir=os.path.join(root, 'val'), checkpoint_dir=str(tmp_path), latent_dim=16)
    nets = Oracle()
    nets_ema = Munch(generator=nets.generator, style_encoder=nets.style_encoder, mapping_network=nets.mapping_network)
    nets_ema = Munch({k: _Wrap(v) for k, v in nets_ema.items()})
    s = score_demo(nets_ema, args, torch.device('cpu'), step=7)
    saved = json.loads((tmp_path / 'demo_score_000007.json').read_text())
    assert saved == s and saved['step'] == 7 and saved['domains'] == ['square', 'triangle']
    assert saved['domain_accuracy'] == 1.0


class _Wrap(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *a, **kw):
        return self.fn(*a, **kw)
