"""Side jobs that fail in a tiny training run (in this process, the failure injected): the run stops at the step it
failed in with its checkpoint saved and one line naming the job and the cause; the disk's errors without a
traceback, a bug with one. What can be known before the first iteration is said then, naming the flag."""
import errno
import os

import pytest
import torch
from munch import Munch

from conftest import tiny_args
from core.machinery import integrity
from core.machinery.side_jobs import SideJobError
from core.machinery.train_log import TrainLogger

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from core.demo.data import make_demo_dataset
    return make_demo_dataset(str(tmp_path_factory.mktemp('side')), n_train=2, n_val=2, size=32, n_sample=1)


def train(tmp_path, data, **kw):
    from main import main
    args = tiny_args(train_img_dir=os.path.join(data, 'train'), val_img_dir=os.path.join(data, 'val'),
                     checkpoint_dir=str(tmp_path / 'ckpt'), sample_dir=str(tmp_path / 'samples'),
                     eval_dir=str(tmp_path / 'eval'), resume_iter=0, total_iters=4, **kw)
    torch.manual_seed(0)
    main(Munch(args))


def raising(e):
    def fail(*a, **k):
        raise e
    return fail


@pytest.mark.parametrize('where, error, job, cause, traceback', [
    ('plot', OSError(errno.ENOSPC, 'No space left on device', 'samples/losses.png'), 'the loss plot (losses.png)',
     'ENOSPC: No space left on device (samples/losses.png)', False),
    ('log', OSError(errno.EIO, 'Input/output error'), 'the training log (train_log.jsonl)',
     'EIO: Input/output error', False),
    ('tb_images', TypeError('a bug in a side job'), 'TensorBoard', 'TypeError: a bug in a side job', True)])
def test_a_failed_side_job_saves_its_step_and_names_itself(tmp_path, data, monkeypatch, capsys, where, error, job,
                                                           cause, traceback):
    monkeypatch.setattr(TrainLogger, where, raising(error))
    with pytest.raises(SideJobError) as e:
        train(tmp_path, data, sample_every=2, print_every=2)
    assert str(e.value) == (f'{job} failed at step 2: {cause}; training stopped, the checkpoint of step 2 is saved: '
                            f'fix the cause and resume with --resume_iter -1')
    assert ('Traceback' in capsys.readouterr().err) == traceback
    folder = str(tmp_path / 'ckpt')
    assert integrity.latest_intact_step(folder, report=False) == 2 and integrity.check_step(folder, 2) is None
    assert not os.path.exists(integrity.net_path(folder, 3, 'nets'))


def test_missing_evaluation_weights_are_named_before_training(tmp_path, data):
    with pytest.raises(SideJobError, match=r'^--eval_every 2: evaluation needs its weights: .*--inception_weights'):
        train(tmp_path, data, eval_every=2, inception_weights=str(tmp_path / 'none.pth'))
    assert not os.path.exists(tmp_path / 'ckpt' / 'train_log.jsonl')
