"""scripts/dataset_tool.py on small hand-made folders: both input forms, CelebA's attribute file, bad and duplicate
files, the refusal of a non-empty destination, --size, --align, and a training iteration on what it writes."""
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
from munch import Munch
from PIL import Image

from conftest import tiny_args
from scripts import dataset_tool

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.one_thread


def image(path, seed, size=(40, 36)):
    """A random RGB image (each seed its own bytes) written in the format its extension names."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def truncated(path, seed):
    image(path, seed)
    data = open(path, 'rb').read()
    with open(path, 'wb') as f:
        f.write(data[:len(data) // 2])  # a download cut short: the header reads, the pixels do not
    return path


def tree_digest(root):
    """Every file's relative path and bytes, to show that the source is left as it was."""
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            h.update(os.path.relpath(p, root).encode() + open(p, 'rb').read())
    return h.hexdigest()


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def run(argv, capsys):
    code = dataset_tool.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def folders(tmp_path):
    """SRC/<domain>/ with a nested folder, a truncated file, a copy of another file and a .webp."""
    src = tmp_path / 'src'
    for i in range(6):
        image(str(src / 'cat' / f'c{i}.jpg'), i)
    for i in range(4):
        image(str(src / 'dog' / f'd{i}.png'), 10 + i)
    image(str(src / 'dog' / 'more' / 'd9.png'), 19)
    image(str(src / 'dog' / 'w.webp'), 20)
    truncated(str(src / 'cat' / 'broken.jpg'), 30)
    shutil.copyfile(src / 'cat' / 'c1.jpg', src / 'dog' / 'same_as_c1.jpg')
    return src


def test_domain_folders_split_copied_and_problems_named(folders, tmp_path, capsys):
    before = tree_digest(folders)
    dest = tmp_path / 'out'
    code, out, err = run(['--source', folders, '--dest', dest, '--val', 2, '--seed', 3], capsys)
    assert code == 0, err
    assert tree_digest(folders) == before
    report = json.loads((dest / 'dataset_tool.json').read_text())
    # cat: 6 good (broken skipped); dog: 4 + nested + webp (the copy of c1 skipped)
    assert report['domains'] == {'cat': {'train': 4, 'val': 2}, 'dog': {'train': 4, 'val': 2}}
    skipped = {os.path.basename(s['file']): s['why'] for s in report['skipped']}
    assert set(skipped) == {'broken.jpg', 'same_as_c1.jpg'}
    assert skipped['broken.jpg'].startswith('unreadable: ')
    assert 'duplicate of ' + str(folders / 'cat' / 'c1.jpg') in skipped['same_as_c1.jpg']
    assert 'domain cat' in skipped['same_as_c1.jpg']
    for name in ('broken.jpg', 'same_as_c1.jpg'):
        assert f'skipped: {folders}' in out and name in out
    assert re.search(r'^ +cat +train +4 +val +2$', out, re.M) and re.search(r'^ +dog +train +4 +val +2$', out, re.M)
    assert 'warning: domain "cat" has 4 training images (fewer than 1,000)' in out
    assert 'clovaai/stargan-v2#42' in out
    names = files_under(dest)
    # paths below the domain folder kept; the .webp (which training does not read) written as PNG
    assert {'train/dog/more/d9.png', 'val/dog/more/d9.png'} & set(names)
    assert any(n.endswith('dog/w.png') for n in names)
    for n in names:
        if n.endswith('.jpg') or (n.endswith('.png') and not n.endswith('w.png')):
            domain_rel = n.split('/', 2)[2]
            assert (dest / n).read_bytes() == (folders / n.split('/')[1] / domain_rel).read_bytes()
    # the same seed draws the same validation images; the held-out ones are not in train
    dest2 = tmp_path / 'out2'
    assert run(['--source', folders, '--dest', dest2, '--val', 2, '--seed', 3], capsys)[0] == 0
    assert files_under(dest) == files_under(dest2)
    val = {n.split('/', 1)[1] for n in names if n.startswith('val/')}
    train = {n.split('/', 1)[1] for n in names if n.startswith('train/')}
    assert len(val) == 4 and not val & train
    assert not [n for n in os.listdir(tmp_path) if n.endswith('.tmp')]


def test_csv_labels_any_depth(tmp_path, capsys):
    src = tmp_path / 'photos'
    for i in range(4):
        image(str(src / '2019' / f'a{i}.png'), i)
        image(str(src / '2020' / 'deep' / f'b{i}.png'), 10 + i)
    image(str(src / 'unlabelled.png'), 99)
    rows = ['file,domain'] + [f'2019/a{i}.png,smile' for i in range(4)] + \
           [f'2020/deep/b{i}.png,frown' for i in range(4)] + ['2020/missing.png,frown']
    (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
    dest = tmp_path / 'data'
    code, out, err = run(['--source', src, '--labels', tmp_path / 'labels.csv', '--dest', dest, '--val', 1], capsys)
    assert code == 0, err
    assert sorted(os.listdir(dest / 'train')) == ['frown', 'smile']
    assert len(files_under(dest / 'train' / 'smile')) == 3 and len(files_under(dest / 'val' / 'frown')) == 1
    assert all(f.startswith('2019/') for f in files_under(dest / 'train' / 'smile'))  # paths below SRC kept
    assert f'skipped: {src}/2020/missing.png: no such image ({tmp_path / "labels.csv"} line 10)' in out
    assert '1 image(s) under' in out and 'have no label' in out
    bad = tmp_path / 'bad.csv'
    bad.write_text('2019/a0.png,smile,extra\n')
    code, out, err = run(['--source', src, '--labels', bad, '--dest', tmp_path / 'x'], capsys)
    assert code == 2 and err.strip() == f'error: --labels: {bad} line 1: expected 2 fields (file,domain), got 3'


def test_celeba_attribute_file(tmp_path, capsys):
    src = tmp_path / 'img_align_celeba'
    names = [f'{i:06d}.jpg' for i in range(1, 9)]
    for i, n in enumerate(names):
        image(str(src / n), i)
    smiling = [1, -1, 1, 1, -1, -1, 1, -1]
    lines = [str(len(names)), 'Bald Smiling Young'] + [f'{n}  -1 {s:2d}  1' for n, s in zip(names, smiling)]
    attr = tmp_path / 'list_attr_celeba.txt'
    attr.write_text('\n'.join(lines) + '\n')
    dest = tmp_path / 'smile'
    code, out, err = run(['--source', src, '--labels', attr, '--attribute', 'smiling', '--dest', dest, '--val', 1],
                         capsys)
    assert code == 0, err
    got = {d: sorted(os.listdir(dest / 'train' / d)) + sorted(os.listdir(dest / 'val' / d))
           for d in ('smiling', 'not_smiling')}
    assert sorted(got['smiling']) == [n for n, s in zip(names, smiling) if s == 1]
    assert sorted(got['not_smiling']) == [n for n, s in zip(names, smiling) if s == -1]
    code, out, err = run(['--source', src, '--labels', attr, '--dest', tmp_path / 'y'], capsys)
    assert code == 2 and '--attribute' in err and 'Bald, Smiling, Young' in err
    code, out, err = run(['--source', src, '--labels', attr, '--attribute', 'Wavy', '--dest', tmp_path / 'y'], capsys)
    assert code == 2 and err.startswith('error: --attribute Wavy: not in')
    assert not (tmp_path / 'y').exists()


def test_non_empty_dest_is_refused_and_overlap_too(folders, tmp_path, capsys):
    dest = tmp_path / 'taken'
    dest.mkdir()
    (dest / 'mine.txt').write_text('keep me')
    code, out, err = run(['--source', folders, '--dest', dest, '--val', 1], capsys)
    assert code == 2 and err.strip() == (f'error: --dest: {dest} exists and is not empty; choose another folder or '
                                         f'pass --overwrite')
    assert os.listdir(dest) == ['mine.txt']
    code, out, err = run(['--source', folders, '--dest', dest, '--val', 1, '--overwrite'], capsys)
    assert code == 0, err
    assert sorted(os.listdir(dest)) == ['dataset_tool.json', 'train', 'val']
    # --overwrite never removes the source: a destination inside it, or holding it, is refused
    before = tree_digest(folders)
    for d in (folders / 'cat', tmp_path):
        code, out, err = run(['--source', folders, '--dest', d, '--overwrite'], capsys)
        assert code == 2 and 'overlap' in err
    assert tree_digest(folders) == before
    code, out, err = run(['--source', folders, '--dest', tmp_path / 'n', '--val', 7], capsys)
    assert code == 2 and 'domain "cat" has 6 usable image(s)' in err


def test_size_crops_the_centre(tmp_path, capsys):
    src = tmp_path / 'src'
    for d in ('a', 'b'):
        for i in range(2):
            a = np.zeros((40, 60, 3), np.uint8)
            a[:, :10] = (255, 0, 0)  # red bands outside the centre square
            a[:, 50:] = (255, 0, 0)
            a[:, 10:50] = (0, 200, 0) if i else (0, 0, 200)
            os.makedirs(src / d, exist_ok=True)
            Image.fromarray(a).save(src / d / f'{i}.png')
    dest = tmp_path / 'out'
    assert run(['--source', src, '--dest', dest, '--val', 1, '--size', 16], capsys)[0] == 0
    for f in files_under(dest / 'train') + files_under(dest / 'val'):
        path = (dest / 'train' / f) if (dest / 'train' / f).exists() else dest / 'val' / f
        a = np.asarray(Image.open(path))
        assert a.shape == (16, 16, 3) and a[..., 0].max() < 20


def test_align_writes_squares_and_names_faces_it_cannot_place(tmp_path, capsys, random_wing):
    import torch
    from core.wing import FAN
    from test_align import synthetic_mean_face
    lm = tmp_path / 'lm.npz'
    np.savez(lm, mean=synthetic_mean_face().astype(np.float32))
    src = tmp_path / 'src'
    for d in ('a', 'b'):
        for i in range(2):
            image(str(src / d / f'{i}.jpg'), 10 * ord(d) + i, size=(50, 70))
    common = ['--source', src, '--val', 1, '--size', 32, '--align', '--lm_path', lm, '--device', 'cpu',
              '--workers', 1]
    code, out, err = run(common + ['--dest', tmp_path / 'out', '--wing_path', random_wing], capsys)
    assert code == 0, err
    assert [Image.open(tmp_path / 'out' / p / d / f).size for p in ('train', 'val') for d in ('a', 'b')
            for f in os.listdir(tmp_path / 'out' / p / d)] == [(32, 32)] * 4
    zero = FAN()
    for p in zero.parameters():
        torch.nn.init.zeros_(p)  # every landmark in one place: no face to align
    torch.save({'state_dict': zero.state_dict()}, tmp_path / 'zero.ckpt')
    code, out, err = run(common + ['--dest', tmp_path / 'out2', '--wing_path', tmp_path / 'zero.ckpt'], capsys)
    assert code == 0
    assert f'skipped: {src}/a/0.jpg: cannot align' in out
    code, out, err = run(common + ['--dest', tmp_path / 'out3', '--wing_path', tmp_path / 'none.ckpt'], capsys)
    assert code == 2 and 'none.ckpt' in err and not (tmp_path / 'out3').exists()


def test_one_training_iteration_on_the_output(folders, tmp_path, capsys):
    from main import main
    dest = tmp_path / 'data'
    assert run(['--source', folders, '--dest', dest, '--val', 2, '--size', 32], capsys)[0] == 0
    args = tiny_args(train_img_dir=str(dest / 'train'), val_img_dir=str(dest / 'val'), total_iters=1,
                     checkpoint_dir=str(tmp_path / 'ckpt'), sample_dir=str(tmp_path / 'samples'), save_every=1)
    main(Munch(args))
    assert os.path.exists(tmp_path / 'ckpt' / '000001_nets_ema.ckpt')
    assert json.load(open(tmp_path / 'ckpt' / 'args.json'))['domains'] == 'cat,dog'
