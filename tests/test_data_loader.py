import os

import pytest
import torch
from PIL import Image

from core.data_loader import (BalancedInfiniteSampler, DataError, InputFetcher, get_eval_loader, get_test_loader,
                              get_train_loader)
from core.demo.data import make_demo_dataset


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return make_demo_dataset(str(tmp_path_factory.mktemp('demo')), n_train=6, n_val=3, size=32)


def loader(root, which='source', **kw):
    opts = dict(img_size=32, batch_size=4, num_workers=0, seed=1, num_domains=2)
    opts.update(kw)
    return get_train_loader(os.path.join(root, 'train'), which=which, **opts)


def test_batches_shapes_ranges_and_fields(demo):
    fetcher = InputFetcher(loader(demo), loader(demo, 'reference'), 16, 'train')
    b = next(fetcher)
    assert set(b) == {'x_src', 'y_src', 'x_ref', 'x_ref2', 'y_ref', 'z_trg', 'z_trg2'}
    assert b.x_src.shape == b.x_ref.shape == b.x_ref2.shape == (4, 3, 32, 32)
    assert b.z_trg.shape == (4, 16) and not torch.equal(b.z_trg, b.z_trg2)
    assert b.x_src.min() >= -1 and b.x_src.max() <= 1
    assert b.y_src.dtype == torch.long


def test_reference_pairs_share_a_domain(demo):
    ds = loader(demo, 'reference').dataset
    by_file = {f: y for (f, _), y in zip(ds.samples, ds.targets)}
    for (f1, f2), y in zip(ds.samples, ds.targets):
        assert by_file[f2] == y


def test_sampler_is_balanced():
    labels = [0] * 90 + [1] * 10
    it = iter(BalancedInfiniteSampler(labels, seed=0))
    draws = [next(it)[0] for _ in range(4000)]
    frac_small = sum(1 for i in draws if labels[i] == 1) / len(draws)
    assert 0.45 < frac_small < 0.55


def test_sampler_resumes_and_shards_the_same_stream():
    labels = [0, 0, 0, 1, 1]
    it = iter(BalancedInfiniteSampler(labels, seed=3))
    stream = [next(it) for _ in range(23)]
    resumed = iter(BalancedInfiniteSampler(labels, seed=3, start=11))
    assert [next(resumed) for _ in range(12)] == stream[11:]
    r0, r1 = (iter(BalancedInfiniteSampler(labels, seed=3, rank=r, world_size=2)) for r in (0, 1))
    assert [next(r0) for _ in range(11)] == stream[0::2][:11]
    assert [next(r1) for _ in range(11)] == stream[1::2][:11]


def test_augmentation_is_deterministic_per_draw(demo):
    a = next(iter(loader(demo, start_step=3)))
    full = iter(loader(demo))
    for _ in range(3):
        next(full)
    b = next(full)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_workers_give_the_same_batches(demo):
    a = next(iter(loader(demo, num_workers=0)))
    b = next(iter(loader(demo, num_workers=2)))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_val_and_eval_loaders(demo):
    val = get_test_loader(os.path.join(demo, 'val'), img_size=32, batch_size=4, num_workers=0)
    x, y = next(iter(val))
    assert x.shape == (4, 3, 32, 32)
    ev = get_eval_loader(os.path.join(demo, 'val', 'square'), img_size=32, batch_size=2, num_workers=0)
    x = next(iter(ev))
    assert x.shape == (2, 3, 299, 299)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match='--train_img_dir: folder not found'):
        loader(str(tmp_path / 'nope'))


def test_wrong_number_of_domains(demo):
    with pytest.raises(DataError, match=r'2 domain folders \(square, triangle\) but --num_domains is 3'):
        loader(demo, num_domains=3)


def test_empty_domain_is_named(tmp_path):
    (tmp_path / 'train' / 'cat').mkdir(parents=True)
    (tmp_path / 'train' / 'dog').mkdir(parents=True)
    Image.new('RGB', (8, 8)).save(tmp_path / 'train' / 'cat' / 'a.png')
    with pytest.raises(DataError, match='domain "dog" has no images'):
        loader(str(tmp_path))


def test_truncated_image_is_named_or_skipped(tmp_path):
    for d in ('a', 'b'):
        (tmp_path / 'train' / d).mkdir(parents=True)
        for k in range(3):
            Image.new('RGB', (16, 16), (k * 50, 0, 0)).save(tmp_path / 'train' / d / f'{k}.jpg')
    bad = tmp_path / 'train' / 'b' / '1.jpg'
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match=r'1\.jpg.*--skip_bad_images'):
        loader(str(tmp_path), batch_size=2)
    with pytest.warns(UserWarning, match=r'dropped 1 image'):
        ld = loader(str(tmp_path), batch_size=2, skip_bad_images=True)
    assert len(ld.dataset) == 5


def test_images_are_checked_once_for_both_training_loaders(tmp_path, monkeypatch):
    import core.data_loader as dl
    root = make_demo_dataset(str(tmp_path / 'd'), n_train=3, n_val=1, size=16)
    calls = []
    orig = dl.decode_error
    monkeypatch.setattr(dl, 'decode_error', lambda f: calls.append(f) or orig(f))
    loader(root)
    loader(root, 'reference')
    assert len(calls) == 6  # 2 domains x 3 images, once


@pytest.mark.parametrize('n_val, batch', [(24, 32), (3, 32), (32, 32)])  # 48 images: 32 + 16; 6: under a batch; 64
def test_val_sources_and_references_are_as_many(tmp_path, n_val, batch):
    """The sample grids' inputs: as many references as sources, whatever the folder's size and --val_batch_size;
    where the loader's second batch is full (64 images in 32s), the references are that batch, as the reference
    takes them."""
    root = make_demo_dataset(str(tmp_path / 'd'), n_train=1, n_val=n_val, size=32, n_sample=1)
    val = lambda: get_test_loader(os.path.join(root, 'val'), img_size=32, batch_size=batch, num_workers=0, seed=7)
    inputs = next(InputFetcher(val(), None, 8, 'val'))
    n = min(batch, 2 * n_val)
    assert inputs.x_src.shape == inputs.x_ref.shape == (n, 3, 32, 32)
    assert inputs.y_src.shape == inputs.y_ref.shape == (n,)
    loader = val()
    stream = list(loader) + list(loader)  # the loader's own batches over two epochs (the same seed: the same order)
    assert torch.equal(inputs.x_src, stream[0][0])
    refs = torch.cat([b[0] for b in stream[1:]])[:n], torch.cat([b[1] for b in stream[1:]])[:n]
    assert torch.equal(inputs.x_ref, refs[0]) and torch.equal(inputs.y_ref, refs[1])
    if n_val != 3:  # the first references: the loader's second batch, as the reference takes them
        assert torch.equal(inputs.x_ref[:stream[1][0].size(0)], stream[1][0])
    if n_val == 24:  # 32 sources, the 16 images left, then 16 from the next epoch
        assert stream[1][0].size(0) == 16 and torch.equal(inputs.x_ref[16:], stream[2][0][:16])


def test_sample_grids_where_the_last_batch_is_short(tmp_path, one_thread):
    """12 images in batches of 8 (48 in 32s, smaller): the grids of a sample step are written, 8 sources by 8
    references (the reference failed there: 8 sources, 4 references)."""
    from conftest import tiny_args
    from core.model import build_model
    from core.utils import debug_image
    root = make_demo_dataset(str(tmp_path / 'd'), n_train=1, n_val=6, size=32, n_sample=1)
    args = tiny_args(val_batch_size=8, sample_dir=str(tmp_path / 's'), num_outs_per_domain=1)
    _, nets_ema = build_model(args)
    val = get_test_loader(os.path.join(root, 'val'), img_size=32, batch_size=8, num_workers=0)
    debug_image(nets_ema, args, next(InputFetcher(val, None, args.latent_dim, 'val')), step=1)
    with Image.open(tmp_path / 's' / '000001_reference.jpg') as im:
        assert im.size == (9 * 32, 9 * 32)
    with Image.open(tmp_path / 's' / '000001_cycle_consistency.jpg') as im:
        assert im.size == (8 * 32, 4 * 32)
