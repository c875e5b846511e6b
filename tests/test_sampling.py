"""--mode sample end to end on tiny random networks: the outputs chosen with --outputs, their sizes, a video, and the
flag's errors."""
import os

import pytest
import torch
from PIL import Image

from conftest import tiny_args
from core.config import parse_args
from core.demo.data import make_demo_dataset
from core.solver import Solver


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A checkpoint at step 1 of tiny random networks, and the demo's src/ref folders."""
    root = tmp_path_factory.mktemp('sample')
    data = make_demo_dataset(str(root / 'data'), n_train=2, n_val=2, size=32)
    torch.manual_seed(0)
    args = tiny_args(checkpoint_dir=str(root / 'ckpt'))
    Solver(args, 'cpu').checkpoint.save(1)
    return root, data, args


def run_sample(trained, tmp_path, outputs):
    from main import main
    _, data, train_args = trained
    args = tiny_args(mode='sample', checkpoint_dir=train_args.checkpoint_dir, resume_iter=1,
                     src_dir=os.path.join(data, 'src'), ref_dir=os.path.join(data, 'ref'),
                     result_dir=str(tmp_path / 'results'), outputs=outputs, val_batch_size=8)
    main(args)
    return tmp_path / 'results', args


def test_images_only(trained, tmp_path):
    results, args = run_sample(trained, tmp_path, 'reference,latent')
    assert sorted(os.listdir(results)) == ['latent_psi_0.5.jpg', 'latent_psi_0.7.jpg', 'latent_psi_1.0.jpg',
                                           'reference.jpg']
    n_src, n_ref = (sum(len(files) for _, _, files in os.walk(d)) for d in (args.src_dir, args.ref_dir))
    S = args.img_size
    assert Image.open(results / 'reference.jpg').size == ((n_src + 1) * S, (n_ref + 1) * S)
    rows = 1 + args.num_domains * args.num_outs_per_domain
    assert Image.open(results / 'latent_psi_0.7.jpg').size == (n_src * S, rows * S)


def test_one_video(trained, tmp_path, capsys):
    from core.video import FFmpegNotFoundError, find_ffmpeg
    try:
        find_ffmpeg()
    except FFmpegNotFoundError:
        pytest.skip('no ffmpeg')
    results, _ = run_sample(trained, tmp_path, 'video_ref')
    assert os.listdir(results) == ['video_ref.mp4'] and os.path.getsize(results / 'video_ref.mp4') > 1000
    err = capsys.readouterr().err
    assert 'video_ref.mp4' in err and 'frame' in err  # the per-frame bar


def test_unknown_outputs_are_an_error_naming_the_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(['--mode', 'sample', '--outputs', 'reference,gif'])
    assert '--outputs' in capsys.readouterr().err
    assert parse_args(['--mode', 'sample', '--outputs', ' latent, reference']).outputs == 'latent,reference'
