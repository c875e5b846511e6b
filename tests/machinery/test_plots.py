"""The loss plot (core/machinery/plots.py) from a log, and written by training at its sample steps; the one message for missing
representative images; the README's speed chart reads docs/benchmarks.md."""
import json
import os
import sys

import pytest
from munch import Munch
from PIL import Image

from conftest import REPO, tiny_args
from core.data_loader import DataError
from core.inference.representative import check_representative
from core.machinery.plots import PANELS, plot_losses, read_log
from core.machinery.train_log import LOSS_NAMES


def write_log(path, steps):
    with open(path, 'w') as f:
        for s in steps:
            rec = dict(step=s, elapsed_s=s, **{k: 1.0 / s for k in LOSS_NAMES}, **{'G/lambda_ds': 1 - s / 10})
            f.write(json.dumps(rec) + '\n')


def test_every_logged_term_has_a_panel():
    keys = {k for _, a, b in PANELS for k in (a, b) if k}
    assert keys == set(LOSS_NAMES) | {'G/lambda_ds'}


def test_plot_losses_writes_a_png(tmp_path):
    log = tmp_path / 'train_log.jsonl'
    write_log(log, [1, 2, 3])
    with open(log, 'a') as f:  # a resumed run appends from its step on: the later record wins
        f.write(json.dumps(dict(step=3, **{k: 5.0 for k in LOSS_NAMES}, **{'G/lambda_ds': 0.0})) + '\n')
    assert [r['D/latent_real'] for r in read_log(log)] == [1.0, 0.5, 5.0]
    png = plot_losses(str(log), str(tmp_path / 'out' / 'losses.png'))
    img = Image.open(png)
    assert img.format == 'PNG' and img.size[0] > 600 and img.size[1] > 300
    assert not os.path.exists(png + '.tmp.png')
    (tmp_path / 'empty.jsonl').write_text('')
    assert plot_losses(str(tmp_path / 'empty.jsonl'), str(tmp_path / 'none.png')) is None


def test_training_writes_the_plot_at_sample_steps(tmp_path):
    from core.demo.data import make_demo_dataset
    from main import main
    data = make_demo_dataset(str(tmp_path / 'data'), n_train=4, n_val=2, size=32)
    args = tiny_args(train_img_dir=os.path.join(data, 'train'), val_img_dir=os.path.join(data, 'val'),
                     checkpoint_dir=str(tmp_path / 'ckpt'), sample_dir=str(tmp_path / 'samples'), sample_every=2,
                     total_iters=2)
    main(Munch(args, resume_iter=0))
    assert Image.open(tmp_path / 'samples' / 'losses.png').format == 'PNG'
    assert os.path.exists(tmp_path / 'samples' / '000002_reference.jpg')


def test_missing_representative_images_name_the_download(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = Munch(mode='sample', src_dir='assets/representative/celeba_hq/src',
                 ref_dir='assets/representative/celeba_hq/ref', inp_dir='x', out_dir='y')
    with pytest.raises(DataError, match=r'--src_dir assets/representative/celeba_hq/src, --ref_dir .*not found.*'
                                        r'bash scripts/download.sh representative-images'):
        check_representative(args)
    check_representative(Munch(args, src_dir='mine/src', ref_dir='mine/ref'))  # not the defaults: the loader's errors
    check_representative(Munch(args, mode='train'))
    with pytest.raises(DataError, match='--inp_dir'):
        check_representative(Munch(args, mode='align', inp_dir='assets/representative/custom/female'))


def test_speed_chart_reads_the_measured_table(tmp_path):
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    from make_assets import read_benchmarks, speed_chart
    rows = read_benchmarks(os.path.join(REPO, 'docs', 'benchmarks.md'))
    assert ('AFHQ', 'eager fp32', 0.533, 16.3, 0.581, 17.2) in rows
    speed_chart(os.path.join(REPO, 'docs', 'benchmarks.md'), str(tmp_path / 's.png'))
    assert Image.open(tmp_path / 's.png').format == 'PNG'
