"""LPIPS: equal to the `lpips` package's model on the same weights, the golden value, the model built once."""
import json
import sys
import urllib.error
from pathlib import Path

import lpips
import pytest
import torch
from torchvision import models

import metrics.lpips as L
from metrics.weights import ALEXNET, WeightsNotFoundError, cached_path
from scripts.benchmark_eval import write_random_weights

GOLDEN_DIR = Path(__file__).resolve().parents[2].parent / 'shared' / 'spec' / 'golden'


@pytest.fixture
def alexnet_home(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'home'))
    return write_random_weights(str(tmp_path / 'home'), seed=3, nets=('alexnet',))['alexnet']


def package_model(alexnet_path):
    """The lpips package's own LPIPS (v0.1 linear layers) with our AlexNet weights in its feature slices."""
    model = lpips.LPIPS(net='alex', pretrained=True, pnet_rand=True, verbose=False).eval()
    features = models.alexnet(weights=None)
    features.load_state_dict(torch.load(alexnet_path, weights_only=True))
    with torch.no_grad():
        for name, p in model.net.named_parameters():  # slice{k}.{index in alexnet.features}.{weight,bias}
            _, idx, kind = name.split('.')
            p.copy_(getattr(features.features[int(idx)], kind))
    return model


def test_equals_the_lpips_package(alexnet_home):
    torch.manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64) * 2 - 1, torch.rand(3, 3, 64, 64) * 2 - 1
    ours = L.load_lpips('cpu')
    theirs = package_model(alexnet_home)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, y), theirs(x, y).flatten(), rtol=1e-5, atol=1e-7)

    group = [torch.rand(2, 3, 48, 48) * 2 - 1 for _ in range(4)]
    with torch.no_grad():
        expected = torch.stack([theirs(group[i], group[j]).mean() for i in range(4) for j in range(i + 1, 4)]).mean()
    got = L.calculate_lpips_given_images(group)
    assert isinstance(got, float) and got == pytest.approx(expected.item(), rel=1e-5)
    assert L.calculate_lpips_given_images(group, max_batch=3) == pytest.approx(got, rel=1e-6)


def test_model_is_built_once(alexnet_home, monkeypatch):
    first = L.load_lpips('cpu')
    monkeypatch.setattr(L, 'LPIPS', None)  # a rebuild would fail
    assert L.load_lpips('cpu') is first
    L.calculate_lpips_given_images([torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32)])


def test_missing_alexnet_weights(tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty'))
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url',
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError('offline')))
    with pytest.raises(WeightsNotFoundError) as e:
        L.calculate_lpips_given_images([torch.zeros(1, 3, 32, 32)] * 2)
    assert cached_path(ALEXNET) in str(e.value) and '--lpips_alexnet_weights' in str(e.value)


def test_golden_lpips(tmp_path, monkeypatch):
    if not (GOLDEN_DIR / 'golden.json').is_file():
        pytest.skip(f'golden values not found under {GOLDEN_DIR}')
    sys.path.insert(0, str(GOLDEN_DIR))
    import fill
    golden = json.loads((GOLDEN_DIR / 'golden.json').read_text())['metrics_celeba_ref']
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    path = Path(cached_path(ALEXNET))
    path.parent.mkdir(parents=True)
    torch.save(fill.fill_(models.alexnet(weights=None), 12).state_dict(), path)
    value = L.calculate_lpips_given_images([fill.image(7, f'lpips{i}', 3, 64) for i in range(4)])
    assert abs(value - golden['lpips']) / golden['lpips'] <= golden['tolerance']['lpips']
