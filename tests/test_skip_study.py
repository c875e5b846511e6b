"""scripts/skip_study.py end to end at toy sizes (2 iterations per variant, 32 px): without ImageNet weights (the
weight-free measures, "not measured" for the rest) and with random weights saved to temp files (FID, LPIPS, LPIPS to
source through metrics/eval.py); and its shape measures on hand-made images."""
import json
import math
import os

import pytest
import torch
from PIL import Image

import metrics.eval as E
from core.demo_data import make_demo_dataset
from scripts import skip_study
from scripts.benchmark_eval import write_random_weights
from test_eval import cheap_distance

TINY = ['--img_size', '32', '--base_dim', '4', '--max_conv_dim', '8', '--hidden_dim', '16', '--style_dim', '16',
        '--latent_dim', '8', '--total_iters', '2', '--batch_size', '2', '--val_batch_size', '2',
        '--num_outs_per_domain', '2', '--print_every', '1', '--sample_every', '0', '--save_every', '0',
        '--device', 'cpu', '--grid_sources', '4']


def square_or_disc(kind, size=64, c=(30.0, 34.0), r=12.0, fg=(1.0, -0.5, 0.2), bg=(-0.8, 0.3, 0.9)):
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing='ij')
    inside = ((xx - c[0]) ** 2 + (yy - c[1]) ** 2 <= r ** 2) if kind == 'circle' else \
        ((xx - c[0]).abs() <= r) & ((yy - c[1]).abs() <= r)
    return torch.where(inside, torch.tensor(fg)[:, None, None], torch.tensor(bg)[:, None, None])[None]


def test_shape_geometry_by_hand():
    for kind, area in (('circle', math.pi * 12 ** 2), ('square', 24 ** 2)):
        g = skip_study.shape_geometry(square_or_disc(kind))
        assert g['found'].item() and g['is_square'].item() == (kind == 'square')
        assert torch.allclose(g['centre'], torch.tensor([[30.0, 34.0]]), atol=0.3)
        assert g['size'].item() == pytest.approx(math.sqrt(area), rel=0.03)
    x = square_or_disc('circle')
    moved = square_or_disc('square', c=(36.4, 34.0), r=6.0)  # 6.4 px right (a tenth of 64), a quarter of the side
    m = skip_study.pixel_measures(x, [moved, moved], trg='square')
    assert m['centre_shift'] == pytest.approx(0.1, abs=0.01)
    assert m['size_change'] == pytest.approx(1 - 12 / (math.sqrt(math.pi) * 12), abs=0.03)
    assert m['target_shape_accuracy'] == 1 and m['pixel_diversity'] == 0 and m['shape_found'] == 1
    same = skip_study.pixel_measures(x, [x, x], trg='circle')
    assert same['pixel_l1_to_source'] == 0 and same['centre_shift'] == 0 and same['size_change'] == 0


def test_shape_classifier_on_the_demo_images(tmp_path):
    root = make_demo_dataset(str(tmp_path / 'demo'), n_train=1, n_val=24, n_sample=1)
    from core.data_loader import get_test_loader
    loader = get_test_loader(os.path.join(root, 'val'), img_size=64, batch_size=64, shuffle=False, num_workers=0)
    x, y = next(iter(loader))
    accuracy = skip_study.classifier_accuracy({'circle': x[y == 0], 'square': x[y == 1]})
    assert accuracy >= 0.95


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp('study')
    make_demo_dataset(str(out / 'demo_data'), n_train=4, n_val=3, n_sample=1)  # small; the study reuses it
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TORCH_HOME', str(out / 'empty_home'))  # no ImageNet weights
        torch.manual_seed(0)
        report = skip_study.main(['--out', str(out)] + TINY)
    return out, report


def test_study_without_imagenet_weights(study):
    out, report = study
    assert [r['skip'] for r in report['results']] == ['hpf', 'unet', 'none']
    assert not report['imagenet_weights'] and report['iterations'] == 2 and report['w_hpf'] == 0  # the demo's
    saved = json.loads((out / 'skip_study.json').read_text())
    assert saved['results'] == json.loads(json.dumps(report['results']))
    hpf, unet, none = report['results']
    assert none['same_as'] == 'hpf' and none['measures'] == hpf['measures']  # w_hpf 0: one network, trained once
    assert not (out / 'none').exists()
    for r in (hpf, unet):
        run = out / r['skip'] / 'checkpoints'
        assert json.loads((run / 'args.json').read_text())['skip'] == r['skip']  # the variant is recorded
        assert (run / '000002_nets_ema.ckpt').exists() and r['train_s'] > 0 and r['trained_now']
    assert hpf['measures'] != unet['measures']
    for r in report['results']:
        for mode in ('latent', 'reference'):
            m = r['measures'][mode]
            assert m['FID'] == m['LPIPS_diversity'] == m['LPIPS_to_source'] == skip_study.NOT_MEASURED
            assert 0 < m['pixel_diversity'] < 1 and 0 < m['pixel_l1_to_source'] < 1
            assert 0 <= m['target_shape_accuracy'] <= 1 and m['centre_shift'] >= 0
    params = {r['skip']: r['generator_parameters'] for r in report['results']}
    assert params['hpf'] == params['none'] < params['unet']
    md = (out / 'skip_study.md').read_text()
    assert 'not measured (no ImageNet weights)' in md and md.count('| unet |') == 2
    assert md.count('| none (= hpf, w_hpf 0) |') == 2
    grid = Image.open(out / 'skip_study_grid.png')
    assert grid.size == (110 + 4 * 64, (2 + 2 * 3) * 64)  # 32-px tiles shown at 64
    assert Image.open(out / 'skip_study_scatter.png').size[0] > 400


def test_study_with_weights_reuses_the_runs(study, tmp_path, monkeypatch):
    out, _ = study
    paths = write_random_weights(str(tmp_path / 'w'), seed=2)
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'empty_home'))
    monkeypatch.setattr(E, 'frechet_distance', cheap_distance)  # scipy's 2048-d sqrtm: a minute on 2 cores
    report = skip_study.main(['--out', str(out), '--figures_dir', str(tmp_path / 'fig'), '--variants', 'unet,hpf',
                              '--inception_weights', paths['inception'], '--lpips_alexnet_weights', paths['alexnet'],
                              '--no_save_eval_images'] + TINY)
    assert report['imagenet_weights'] and [r['trained_now'] for r in report['results']] == [False, False]
    for r in report['results']:  # the time the reused run logged
        log = (out / r['skip'] / 'checkpoints' / 'train_log.jsonl').read_text().splitlines()
        assert r['train_s'] == json.loads(log[-1])['elapsed_s'] > 0
    for r in report['results']:
        for mode in ('latent', 'reference'):
            m = r['measures'][mode]
            assert isinstance(m['FID'], float) and 0 < m['LPIPS_diversity'] < 1 and 0 < m['LPIPS_to_source'] < 1
            intact = json.loads((out / r['skip'] / 'eval' / f'INTACT_00002_{mode}.json').read_text())
            assert m['LPIPS_to_source'] == intact[f'LPIPS_to_source_{mode}/mean']
    assert 'not measured' not in (tmp_path / 'fig' / 'skip_study.md').read_text()


def test_three_trainings_with_w_hpf_and_a_guard_on_reuse(study, tmp_path):
    out, _ = study
    with pytest.raises(SystemExit, match='other flags.*w_hpf'):  # the default's runs are not a w_hpf 1 study
        skip_study.main(['--out', str(out), '--variants', 'hpf', '--w_hpf', '1', '--hpf_masks', 'ones'] + TINY)
    make_demo_dataset(str(tmp_path / 'demo_data'), n_train=4, n_val=3, n_sample=1)
    report = skip_study.main(['--out', str(tmp_path), '--w_hpf', '1', '--hpf_masks', 'ones'] + TINY)
    assert report['w_hpf'] == 1 and all(r['trained_now'] and 'same_as' not in r for r in report['results'])
    params = {r['skip']: r['generator_parameters'] for r in report['results']}
    assert params['hpf'] == params['none'] < params['unet']
    assert report['results'][0]['measures'] != report['results'][2]['measures']  # the unmasked skip matters


def test_bad_flags_are_named():
    with pytest.raises(SystemExit):
        skip_study.main(['--variants', 'hpf,resnet'])
    with pytest.raises(SystemExit):
        skip_study.main(['--skip', 'unet'])
