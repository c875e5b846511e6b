"""FID: the Fréchet distance, the image pipeline, the real-statistics cache, the weights lookup, the golden case.

scipy's sqrtm of a 2048x2048 matrix takes about a minute on a 2-core CPU, so 2048-d distances here are computed
with an exact low-rank identity instead (checked against frechet_distance on smaller singular matrices); set
STARGAN_SLOW_TESTS=1 to also run calculate_fid_given_paths end to end on the golden folders.
"""
import json
import os
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import models

from core import utils
from core.data_loader import get_eval_loader
from metrics.eval import PngWriter
import metrics.fid as fid
from metrics.weights import INCEPTION, WeightsNotFoundError, cached_path, resolve_weights
from scripts.benchmark_eval import write_random_weights

SHARED = Path(__file__).resolve().parents[2].parent / 'shared'
GOLDEN_DIR = SHARED / 'spec' / 'golden'


# ------------------------------------------------------------------------------------------------ Fréchet distance

def lowrank_trace_sqrt(cov, cov2, tol=1e-12):
    """Tr sqrtm(cov @ cov2) through the eigenvectors of cov: with cov = V Λ Vᵀ (rank r), the nonzero eigenvalues of
    cov·cov2 are those of the r x r matrix Λ½ Vᵀ cov2 V Λ½ (symmetric, PSD)."""
    lam, v = np.linalg.eigh(cov)
    keep = lam > tol * lam.max()
    half = v[:, keep] * np.sqrt(lam[keep])
    ev = np.linalg.eigvalsh(half.T @ cov2 @ half)
    return np.sqrt(np.clip(ev, 0, None)).sum()


def frechet_lowrank(mu, cov, mu2, cov2):
    return np.sum((mu - mu2) ** 2) + np.trace(cov) + np.trace(cov2) - 2 * lowrank_trace_sqrt(cov, cov2)


def test_frechet_distance_matches_independent_computations():
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    mu, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    cov, cov2 = a @ a.T / d + 0.1 * np.eye(d), b @ b.T / d + 0.1 * np.eye(d)
    # independent: Tr sqrtm(Σ1Σ2) = Tr sqrtm(Σ1½ Σ2 Σ1½), a symmetric PSD matrix
    lam, v = np.linalg.eigh(cov)
    half = (v * np.sqrt(lam)) @ v.T
    trace_sqrt = np.sqrt(np.linalg.eigvalsh(half @ cov2 @ half)).sum()
    expected = np.sum((mu - mu2) ** 2) + np.trace(cov + cov2) - 2 * trace_sqrt
    assert fid.frechet_distance(mu, cov, mu2, cov2) == pytest.approx(expected, rel=1e-9)
    assert fid.frechet_distance(mu, cov, mu, cov) == pytest.approx(0, abs=1e-9)

    # diagonal covariances: Σ (m1 - m2)² + Σ (√v1 - √v2)²
    v1, v2 = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    closed = np.sum((mu - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = fid.frechet_distance(mu, np.diag(v1), mu2, np.diag(v2))
    assert isinstance(got, float) and got == pytest.approx(closed, rel=1e-10)


def test_frechet_distance_on_singular_covariances_matches_lowrank_identity():
    # what FID meets with fewer images than feature dimensions (as in the golden case below)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((25, 192)), rng.standard_normal((21, 192)) * 1.5 + 0.3
    stats, stats2 = fid.feature_statistics(x), fid.feature_statistics(y)
    assert fid.frechet_distance(*stats, *stats2) == pytest.approx(frechet_lowrank(*stats, *stats2), rel=1e-7)


def test_feature_statistics_are_float64_mean_and_unbiased_cov():
    feats = np.random.default_rng(2).standard_normal((10, 5)).astype(np.float32)
    mu, cov = fid.feature_statistics(feats)
    assert mu.dtype == np.float64 and cov.dtype == np.float64
    x = feats.astype(np.float64)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-15)
    np.testing.assert_allclose(cov, (x - x.mean(0)).T @ (x - x.mean(0)) / 9, rtol=1e-12)


# ---------------------------------------------------------------------------------- the generated images' pixels

def test_in_memory_inputs_equal_the_eval_loader_on_png_files(tmp_path):
    """to_uint8 + inception_inputs on a batch == the PNGs save_image writes, read back through get_eval_loader."""
    img_size = 32
    x = torch.randn(5, 3, img_size, img_size) * 0.7  # values beyond [-1, 1] too: the clamp matters
    x[0, 0, 0, :4] = torch.tensor([-1.0, 1.0, 0.0039215, -0.996])  # near rounding boundaries
    ref_dir, our_dir = tmp_path / 'ref', tmp_path / 'ours'
    pixels = fid.to_uint8(x)
    os.makedirs(our_dir)
    with PngWriter(processes=1) as writer:  # the background writer of metrics.eval
        writer.write(pixels.numpy(), [str(our_dir / ('%04d.png' % k)) for k in range(len(x))])
    for k in range(len(x)):
        utils.save_image(x[k], ncol=1, filename=str(ref_dir / ('%04d.png' % k)))  # the reference's writer
        a = np.asarray(Image.open(ref_dir / ('%04d.png' % k)).convert('RGB'))
        assert np.array_equal(a, pixels[k].numpy())
        assert (ref_dir / ('%04d.png' % k)).read_bytes() == (our_dir / ('%04d.png' % k)).read_bytes()
    loader = get_eval_loader(str(ref_dir), img_size, batch_size=5, shuffle=False, num_workers=0)
    from_files = next(iter(loader))
    in_memory = fid.inception_inputs(pixels, img_size)
    assert from_files.shape == in_memory.shape == (5, 3, 299, 299)
    assert torch.equal(from_files, in_memory)  # bit for bit


# ------------------------------------------------------------------------------------------- weights and the cache

@pytest.fixture(scope='module')
def random_weights(tmp_path_factory):
    home = tmp_path_factory.mktemp('torch_home')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TORCH_HOME', str(home))
        yield write_random_weights(str(home), seed=0)


def _write_images(folder, n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(folder, f'{i}.png'))


def test_missing_weights_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_home'))

    def offline(*args, **kwargs):
        raise urllib.error.URLError('offline')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(WeightsNotFoundError) as e:
        fid.load_inception('cpu')
    msg = str(e.value)
    assert cached_path(INCEPTION) in msg and INCEPTION.url in msg and '--inception_weights' in msg
    with pytest.raises(WeightsNotFoundError, match='no such file'):
        resolve_weights(INCEPTION, str(tmp_path / 'nope.pth'))


def test_weights_load_strictly(tmp_path, random_weights):
    bad = tmp_path / 'bad.pth'
    sd = torch.load(random_weights['inception'], weights_only=True)
    sd.pop('fc.bias')
    torch.save(sd, bad)
    with pytest.raises(RuntimeError, match='fc.bias'):
        fid.load_inception('cpu', str(bad))


def test_inception_features_are_the_torchvision_pool_features(random_weights):
    net = fid.load_inception('cpu')
    tv = models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)
    tv.load_state_dict(torch.load(random_weights['inception'], weights_only=True))
    tv.eval().fc = torch.nn.Identity()  # torchvision's forward up to the pool (dropout is off in eval mode)
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        expected = tv(x)
        # float32 noise of the two memory layouts, relative to the size of the features
        torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item())


def test_real_statistics_cache(tmp_path, random_weights, monkeypatch):
    folder, cache = tmp_path / 'real', tmp_path / 'cache'
    _write_images(folder, 3)
    net, wpath = fid.load_inception('cpu'), random_weights['inception']
    mu, cov = fid.folder_statistics(str(folder), 32, net, wpath, str(cache), batch_size=2, num_workers=0)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith('.npz')  # and no temporary file left behind

    calls = []
    real_features = fid.loader_features
    monkeypatch.setattr(fid, 'loader_features', lambda *a, **k: calls.append(1) or real_features(*a, **k))
    mu2, cov2 = fid.folder_statistics(str(folder), 32, net, wpath, str(cache), batch_size=2, num_workers=0)
    assert not calls and np.array_equal(mu, mu2) and np.array_equal(cov, cov2)  # a hit

    _write_images(folder, 3, seed=1)  # same names, new contents (and mtimes): a miss
    st = os.stat(folder / '0.png')
    os.utime(folder / '0.png', ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    mu3, _ = fid.folder_statistics(str(folder), 32, net, wpath, str(cache), batch_size=2, num_workers=0)
    assert calls and not np.allclose(mu, mu3) and len(os.listdir(cache)) == 2
    # img_size and the weights file are part of the key
    assert fid._cache_file(str(folder), 64, wpath, str(cache)) != fid._cache_file(str(folder), 32, wpath, str(cache))
    before = fid._cache_file(str(folder), 32, wpath, str(cache))
    os.utime(wpath, ns=(os.stat(wpath).st_atime_ns, os.stat(wpath).st_mtime_ns + 10 ** 9))
    assert fid._cache_file(str(folder), 32, wpath, str(cache)) != before


def test_cli_and_calculate_fid_given_paths(tmp_path, random_weights, monkeypatch, capsys):
    _write_images(tmp_path / 'a', 3, seed=2)
    _write_images(tmp_path / 'b', 3, seed=3)
    seen = []

    def fast_frechet(*stats):  # the 2048-d sqrtm is checked elsewhere; here: what arrives and what comes back
        seen.append(stats)
        return 123.5
    monkeypatch.setattr(fid, 'frechet_distance', fast_frechet)
    value = fid.main(['--paths', str(tmp_path / 'a'), str(tmp_path / 'b'), '--img_size', '32', '--batch_size', '2',
                      '--num_workers', '0', '--device', 'cpu'])
    assert 'FID:  123.5' in capsys.readouterr().out and value == 123.5
    (mu, cov, mu2, cov2), = seen
    assert mu.shape == mu2.shape == (2048,) and cov.shape == cov2.shape == (2048, 2048)
    assert not np.allclose(mu, mu2)


# ------------------------------------------------------------------------------------------------- the golden case

def _golden():
    if not (GOLDEN_DIR / 'golden.json').is_file():
        pytest.skip(f'golden values not found under {GOLDEN_DIR}')
    sys.path.insert(0, str(GOLDEN_DIR))
    import fill
    with open(GOLDEN_DIR / 'golden.json') as f:
        return fill, json.load(f)['metrics_celeba_ref']


def write_golden_weights(fill, torch_home):
    """The weights golden.json's config describes, saved as torchvision's cached files."""
    inception = fill.fill_(models.inception_v3(weights=None, aux_logits=True, init_weights=False), 11)
    for m in inception.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    inception.train()
    with torch.no_grad():
        inception(fill.image(7, 'calibrate', 8, 299))
    alexnet = fill.fill_(models.alexnet(weights=None), 12)
    for name, net in (('inception_v3_google-0cc3c7bd.pth', inception), ('alexnet-owt-7be5be79.pth', alexnet)):
        os.makedirs(os.path.join(torch_home, 'hub', 'checkpoints'), exist_ok=True)
        torch.save(net.state_dict(), os.path.join(torch_home, 'hub', 'checkpoints', name))


@pytest.fixture(scope='module')
def golden_stats(tmp_path_factory):
    fill, golden = _golden()
    home = tmp_path_factory.mktemp('golden_home')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TORCH_HOME', str(home))
        write_golden_weights(fill, str(home))
        wpath = resolve_weights(INCEPTION)
        net = fid.load_inception('cpu', wpath)
        root = SHARED / 'data' / 'representative' / 'celeba_hq' / 'ref'
        cache = tmp_path_factory.mktemp('fid_cache')
        stats = {d: fid.folder_statistics(str(root / d), 256, net, wpath, str(cache), batch_size=25, num_workers=0)
                 for d in ('female', 'male')}
        yield fill, golden, stats, root, str(home)


def test_golden_inception_statistics(golden_stats):
    fill, golden, stats, root, _ = golden_stats
    tol = golden['tolerance']['inception_pool']
    for d, (mu, cov) in stats.items():
        g = golden['inception_pool'][d]
        assert len(os.listdir(root / d)) == g['n']
        assert fill.compare(fill.summarize(torch.from_numpy(mu)), g['mu']) <= tol
        assert fill.compare(fill.summarize(torch.from_numpy(cov)), g['cov']) <= tol


def test_golden_fid(golden_stats):
    _, golden, stats, _, _ = golden_stats
    value = frechet_lowrank(*stats['female'], *stats['male'])  # = frechet_distance (see the singular-matrix test)
    assert abs(value - golden['fid']) / golden['fid'] <= golden['tolerance']['fid']


def test_golden_frechet_distance():
    fill, golden = _golden()
    a, b = fill.normal(7, 'A', (64, 64)), fill.normal(7, 'B', (64, 64))
    mu, cov = fill.normal(7, 'mu', (64,)), a @ a.T / 64 + 0.1 * np.eye(64)
    mu2, cov2 = fill.normal(7, 'mu2', (64,)), b @ b.T / 64 + 0.1 * np.eye(64)
    value, expected = fid.frechet_distance(mu, cov, mu2, cov2), golden['frechet_distance']
    assert abs(value - expected) / expected <= golden['tolerance']['frechet_distance']


@pytest.mark.skipif(not os.environ.get('STARGAN_SLOW_TESTS'), reason='set STARGAN_SLOW_TESTS=1 (2048-d sqrtm)')
def test_golden_fid_end_to_end(golden_stats, monkeypatch):
    _, golden, _, root, home = golden_stats
    monkeypatch.setenv('TORCH_HOME', home)
    value = fid.calculate_fid_given_paths([str(root / 'female'), str(root / 'male')], img_size=256, batch_size=25,
                                          num_workers=0)
    assert abs(value - golden['fid']) / golden['fid'] <= golden['tolerance']['fid']
