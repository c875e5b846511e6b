"""scripts/skip_study.py end to end at toy sizes (2 iterations per variant, 32 px): without ImageNet weights (the
weight-free measures, "not measured" for the rest) and with random weights saved to temp files (FID, LPIPS, LPIPS to
source through metrics/eval.py); and its shape measures on hand-made images."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import core.demo.data as demo_data
from core.demo.data import DOMAINS, draw_shape, make_demo_dataset
import metrics.eval as E
from scripts import skip_study
from scripts.benchmark_eval import write_random_weights
from test_eval import cheap_distance

TINY = ['--img_size', '32', '--base_dim', '4', '--max_conv_dim', '8', '--hidden_dim', '16', '--style_dim', '16',
        '--latent_dim', '8', '--total_iters', '2', '--batch_size', '2', '--val_batch_size', '2',
        '--num_outs_per_domain', '2', '--print_every', '1', '--sample_every', '0', '--save_every', '0',
        '--device', 'cpu', '--grid_sources', '4']


def small_data(out):
    """Flags for the study on a small demo set drawn into out/demo_data (4 training images per domain, the 16
    validation images of the demo: fewer leave no shape in the outputs of 2 iterations to measure): without
    --data the study draws the demo's own 500 per domain, whose Inception statistics took four minutes of the suite.
    Its marker file is removed so that --preset demo (the demo's settings, which the study adds only without --data)
    trains on it as given instead of drawing the full set over it."""
    root = make_demo_dataset(str(out / 'demo_data'), n_train=4, n_val=16, n_sample=1)
    for name in (demo_data.MARKER, demo_data.COMPLETE):
        os.remove(os.path.join(root, name))
    return ['--data', root, '--preset', 'demo']


def shape(domain, size=64, centre=(30.0, 34.0), half=12.0, fg=(255, 60, 150), bg=(30, 160, 240)):
    """The demo drawer's own image of domain (a DOMAINS name), centre and half-width in pixels -> (1, 3, H, W)."""
    img = draw_shape(domain, fg, bg, (centre[0] / size, centre[1] / size), half / size, size)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_shape_geometry_by_hand():
    for k, domain in enumerate(DOMAINS):
        g = skip_study.shape_geometry(shape(domain))
        assert g['found'].item() and g['shape'].item() == k
        assert torch.allclose(g['centre'], torch.tensor([[30.0, 34.0]]), atol=0.5)
        assert g['size'].item() == pytest.approx(24, abs=1)
    x = shape(DOMAINS[0])
    moved = shape(DOMAINS[1], centre=(36.4, 34.0), half=6.0)  # 6.4 px right (a tenth of 64), half the size
    m = skip_study.pixel_measures(x, [moved, moved], trg=DOMAINS[1])
    assert m['centre_shift'] == pytest.approx(0.1, abs=0.01)
    assert m['size_change'] == pytest.approx(0.5, abs=0.05)
    assert m['target_shape_accuracy'] == 1 and m['pixel_diversity'] == 0 and m['shape_found'] == 1
    same = skip_study.pixel_measures(x, [x, x], trg=DOMAINS[0])
    assert same['pixel_l1_to_source'] == 0 and same['centre_shift'] == 0 and same['size_change'] == 0


def test_shape_classifier_on_the_demo_images(tmp_path):
    root = make_demo_dataset(str(tmp_path / 'demo'), n_train=1, n_val=24, n_sample=1)
    from core.data_loader import get_test_loader
    loader = get_test_loader(os.path.join(root, 'val'), img_size=64, batch_size=64, shuffle=False, num_workers=0)
    x, y = next(iter(loader))
    accuracy = skip_study.classifier_accuracy({d: x[y == k] for k, d in enumerate(DOMAINS)})
    assert accuracy >= 0.95


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp('study')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv('TORCH_HOME', str(out / 'empty_home'))  # no ImageNet weights
        torch.manual_seed(0)
        report = skip_study.main(['--out', str(out)] + small_data(out) + TINY)
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
    report = skip_study.main(['--out', str(out), '--data', str(out / 'demo_data'), '--preset', 'demo', '--figures_dir',
                              str(tmp_path / 'fig'), '--variants', 'unet,hpf',
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
        skip_study.main(['--out', str(out), '--data', str(out / 'demo_data'), '--preset', 'demo', '--variants', 'hpf',
                         '--w_hpf', '1', '--hpf_masks', 'ones'] + TINY)
    report = skip_study.main(['--out', str(tmp_path), *small_data(tmp_path), '--w_hpf', '1', '--hpf_masks',
                              'ones'] + TINY)
    assert report['w_hpf'] == 1 and all(r['trained_now'] and 'same_as' not in r for r in report['results'])
    params = {r['skip']: r['generator_parameters'] for r in report['results']}
    assert params['hpf'] == params['none'] < params['unet']
    assert report['results'][0]['measures'] != report['results'][2]['measures']  # the unmasked skip matters


def test_bad_flags_are_named():
    with pytest.raises(SystemExit):
        skip_study.main(['--variants', 'hpf,resnet'])
    with pytest.raises(SystemExit):
        skip_study.main(['--skip', 'unet'])
