"""The evaluation protocol on a tiny run: files, keys, PNG names, FID statistics equal to those of the PNGs read
back, reproducibility, early errors; and the benchmark script at toy sizes.

scipy's 2048-d sqrtm takes about a minute on a 2-core CPU: here frechet_distance is replaced by a cheap function of
the same statistics (tests/metrics/test_fid.py checks the real one), so what is checked is which statistics reach it.
"""
import json
import os
import urllib.error

import numpy as np
import pytest
import torch
from munch import Munch
from PIL import Image

from core.model import build_model
import metrics.eval as E
import metrics.fid as fid
from metrics.weights import WeightsNotFoundError
from scripts import benchmark_eval
from scripts.benchmark_eval import write_random_weights

IMG = 32


def cheap_distance(mu, cov, mu2, cov2):
    return float(np.sum((mu - mu2) ** 2) + np.trace(cov) + 2 * np.trace(cov2))


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp('eval')
    rng = np.random.default_rng(0)
    for split, n in (('train', 3), ('val', 3)):
        for d in ('cat', 'dog'):
            os.makedirs(root / split / d)
            for i in range(n):
                img = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
                Image.fromarray(img).save(root / split / d / f'{i}.jpg')
    args = Munch(img_size=IMG, num_domains=2, latent_dim=16, hidden_dim=32, style_dim=16, w_hpf=0, base_dim=8,
                 max_conv_dim=32, val_batch_size=2, num_outs_per_domain=2, num_workers=0, seed=777,
                 train_img_dir=str(root / 'train'), val_img_dir=str(root / 'val'), eval_dir=str(root / 'out'),
                 fid_cache_dir=str(root / 'cache'), no_save_eval_images=False, inception_weights=None,
                 lpips_alexnet_weights=None, skip='hpf', hpf_masks='fan', eval_landmarks=False, wing_path=None)
    torch.manual_seed(0)
    _, nets_ema = build_model(args)
    for net in nets_ema.values():
        net.eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TORCH_HOME', str(root / 'home'))
        write_random_weights(str(root / 'home'), seed=1)
        captured = {}

        def distance(*stats):
            captured[len(captured)] = stats
            return cheap_distance(*stats)
        mp.setattr(E, 'frechet_distance', distance)
        mp.setattr(fid, 'frechet_distance', cheap_distance)
        lpips_dict, fid_dict = E.calculate_metrics(nets_ema, args, 5, 'latent')
        yield Munch(args=args, nets=nets_ema, root=root, lpips=lpips_dict, fid=fid_dict, stats=captured, mp=mp)


def test_json_files_and_keys(setup):
    out = setup.root / 'out'
    lp = json.loads((out / 'LPIPS_00005_latent.json').read_text())
    fd = json.loads((out / 'FID_00005_latent.json').read_text())
    # the reference's order: target-major (trg cat: dog2cat; trg dog: cat2dog)
    assert list(lp) == ['LPIPS_latent/dog2cat', 'LPIPS_latent/cat2dog', 'LPIPS_latent/mean']
    assert list(fd) == ['FID_latent/dog2cat', 'FID_latent/cat2dog', 'FID_latent/mean']
    assert lp['LPIPS_latent/mean'] == pytest.approx((lp['LPIPS_latent/dog2cat'] + lp['LPIPS_latent/cat2dog']) / 2)
    assert fd['FID_latent/mean'] == pytest.approx((fd['FID_latent/dog2cat'] + fd['FID_latent/cat2dog']) / 2)
    assert all(0 < v < 1 for v in lp.values())
    assert lp == setup.lpips and fd == setup.fid


def test_png_names(setup):
    # 3 images in batches of 2: indices 1, 2 then 3; 2 outputs each
    expected = sorted('%04d_%02d.png' % (i, j) for i in (1, 2, 3) for j in (1, 2))
    for task in ('dog2cat', 'cat2dog'):
        folder = setup.root / 'out' / task
        assert sorted(os.listdir(folder)) == expected
        assert Image.open(folder / '0001_01.png').size == (IMG, IMG)


def test_fid_uses_the_statistics_of_the_pngs_and_of_the_training_images(setup, monkeypatch):
    """The JSON's FID is calculate_fid_given_paths on train/<trg> and on the PNGs of eval_dir/<task>."""
    seen = []
    monkeypatch.setattr(fid, 'frechet_distance', lambda *stats: seen.append(stats) or cheap_distance(*stats))
    for k, (task, trg) in enumerate((('dog2cat', 'cat'), ('cat2dog', 'dog'))):
        value = fid.calculate_fid_given_paths([os.path.join(setup.args.train_img_dir, trg),
                                               str(setup.root / 'out' / task)], IMG, 2, num_workers=0,
                                              cache_dir=setup.args.fid_cache_dir)
        assert setup.fid['FID_latent/%s' % task] == pytest.approx(value, rel=1e-6)
        for ours, from_files in zip(setup.stats[k], seen[k]):  # real (from the cache), then the PNGs re-read
            np.testing.assert_allclose(ours, from_files, rtol=1e-5, atol=1e-6)
    # the cache holds one file per training domain, keyed by its folder
    assert sorted(f.split('_')[0] for f in os.listdir(setup.root / 'cache')) == ['cat', 'dog']


class FakeInception(torch.nn.Module):
    """A cheap stand-in with Inception's interface, for runs that check bookkeeping rather than features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.proj = torch.nn.Linear(3 * 16, 2048)

    def forward(self, x):
        return self.proj(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_reference_mode_is_reproducible_and_can_skip_the_pngs(setup, monkeypatch):
    monkeypatch.setattr(E, 'load_inception', lambda device, path: FakeInception().to(device))
    args = Munch(setup.args, no_save_eval_images=True, eval_dir=str(setup.root / 'out_ref'),
                 fid_cache_dir=str(setup.root / 'cache_fake'))
    first = E.calculate_metrics(setup.nets, args, 7, 'reference')
    second = E.calculate_metrics(setup.nets, args, 7, 'reference')
    assert first == second
    assert sorted(os.listdir(args.eval_dir)) == ['FID_00007_reference.json', 'INTACT_00007_reference.json',
                                                 'LPIPS_00007_reference.json']
    assert list(first[0]) == ['LPIPS_reference/dog2cat', 'LPIPS_reference/cat2dog', 'LPIPS_reference/mean']
    third = E.calculate_metrics(setup.nets, Munch(args, seed=778), 7, 'reference')
    assert third[0] != first[0]  # the seed drives the shuffles


def test_reference_mode_needs_a_full_reference_batch(setup):
    args = Munch(setup.args, val_batch_size=4, no_save_eval_images=True, eval_dir=str(setup.root / 'out_small'))
    with pytest.raises(Exception, match='fewer images than --val_batch_size 4'):
        E.calculate_metrics(setup.nets, args, 0, 'reference')


def test_missing_weights_fail_before_any_work(setup, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty'))
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url',
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError('offline')))
    args = Munch(setup.args, eval_dir=str(tmp_path / 'never'))
    with pytest.raises(WeightsNotFoundError, match='inception_v3_google-0cc3c7bd.pth'):
        E.calculate_metrics(setup.nets, args, 0, 'latent')
    assert not os.path.exists(args.eval_dir)


def test_benchmark_script_runs_on_cpu_at_toy_sizes(monkeypatch, capsys):
    monkeypatch.setattr(E, 'frechet_distance', cheap_distance)
    monkeypatch.setattr(fid, 'frechet_distance', cheap_distance)
    report = benchmark_eval.main(['--device', 'cpu', '--n_train', '2', '--n_val', '1', '--train_res', '48',
                                  '--img_size', '32', '--num_outs', '2', '--base_dim', '8', '--max_conv_dim', '32',
                                  '--w_hpf', '0', '--num_workers', '0', '--modes', 'latent', '--reference_like'])
    out = capsys.readouterr().out
    printed = json.loads(out[out.index('\n{\n') + 1:])  # the report is the last thing printed
    assert printed['metrics'] == report['metrics']
    assert {'real_stats', 'lpips', 'fid_features', 'total', 'generation_and_rest'} <= set(printed['ours'])
    assert {'generation_and_png', 'lpips', 'fid', 'total'} <= set(printed['reference_like'])
    # the same seeds: both protocols compute the same numbers
    assert printed['max_metric_diff']['LPIPS'] < 1e-6 and printed['max_metric_diff']['FID_rel'] < 1e-5
