"""--wandb in offline mode (no network): what a tiny run records, read back from wandb's own run file; a resume
continues the same wandb run; without the package, one line naming it."""
import glob
import json
import os
import struct
import sys
import time

import pytest
from munch import Munch

from conftest import tiny_args
from core.machinery.train_log import LOSS_NAMES
from core.machinery.wandb_log import RUN_FILE, WandbError, require_wandb

pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.one_thread

NEEDS_WANDB = 'the wandb package is not installed (requirements.txt lists it for these tests)'


@pytest.fixture
def offline(tmp_path, monkeypatch):
    pytest.importorskip('wandb', reason=NEEDS_WANDB)
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_SILENT', 'true')
    for var in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):  # nothing written outside the test's folder
        monkeypatch.setenv(var, str(tmp_path / 'wandb_home'))
    # the machine's statistics and the console copy are wandb's own: a busy CPU's time better spent on the run
    monkeypatch.setenv('WANDB_X_DISABLE_STATS', 'true')
    monkeypatch.setenv('WANDB_CONSOLE', 'off')
    for var in ('WANDB_DIR', 'WANDB_RUN_ID', 'WANDB_RESUME', 'WANDB_PROJECT', 'WANDB_ENTITY', 'WANDB_NAME'):
        monkeypatch.delenv(var, raising=False)


def records(fname):
    """The protobuf records of a run file (run-<id>.wandb): a 7-byte header, then a LevelDB-style log of 32 KiB
    blocks, each record a 7-byte header (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) and its bytes."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = open(fname, 'rb').read()
    assert data[:4] == b':W&B'
    pos, block, buf = 7, 32768, b''
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            yield r
            buf = b''


def complete_records(run_dir, timeout=30):
    """The records of one offline run folder once its exit record is there: wandb's writer is a process of its own
    that may still be flushing when finish() returns."""
    fname, = glob.glob(os.path.join(run_dir, 'run-*.wandb'))
    deadline = time.time() + timeout
    while True:
        found = list(records(fname)) if os.path.getsize(fname) >= 7 else []
        if any(r.WhichOneof('record_type') == 'exit' for r in found) or time.time() > deadline:
            return found
        time.sleep(0.2)


def recorded(run_dir):
    """(run record, config dict, history rows keyed by step) of one offline run folder."""
    run, config, history = None, {}, {}
    for r in complete_records(run_dir):
        kind = r.WhichOneof('record_type')
        if kind == 'run':
            run = r.run
            config.update({u.key: json.loads(u.value_json) for u in r.run.config.update})
        elif kind == 'config':
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == 'history':
            row = {'.'.join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item}
            history.setdefault(row['_step'], {}).update(row)
    return run, config, history


def train(args, total, resume=0):
    from main import main
    main(Munch(args, total_iters=total, resume_iter=resume))


def test_offline_run_records_losses_grids_settings_and_resumes_into_the_same_run(tmp_path, offline):
    from core.demo.data import make_demo_dataset
    data = make_demo_dataset(str(tmp_path / 'data'), n_train=4, n_val=2, size=32)
    ckpt = tmp_path / 'ckpt'
    args = tiny_args(train_img_dir=os.path.join(data, 'train'), val_img_dir=os.path.join(data, 'val'),
                     checkpoint_dir=str(ckpt), sample_dir=str(tmp_path / 'samples'), print_every=1, sample_every=2,
                     save_every=2, wandb='stargan-test', wandb_name='first')
    train(args, 2)
    run_id = json.loads((ckpt / RUN_FILE).read_text())['id']
    first, = glob.glob(str(ckpt / 'wandb' / 'offline-run-*'))
    run, config, history = recorded(first)
    assert run.run_id == run_id and run.project == 'stargan-test' and run.display_name == 'first'
    assert config['img_size'] == 32 and config['total_iters'] == 2 and config['wandb'] == 'stargan-test'
    assert sorted(history) == [1, 2]
    log = {r['step']: r for r in map(json.loads, (ckpt / 'train_log.jsonl').read_text().splitlines())}
    for step in (1, 2):  # the numbers of the JSON log, every term
        for name in LOSS_NAMES + ['G/lambda_ds']:
            assert history[step][name] == pytest.approx(log[step][name], rel=1e-6), (step, name)
    kinds = ('cycle_consistency', 'reference', 'latent_psi_0.5', 'latent_psi_0.7', 'latent_psi_1.0')
    for kind in kinds:
        assert history[2][f'samples/{kind}._type'] == 'image-file'
        assert os.path.isfile(os.path.join(first, 'files', history[2][f'samples/{kind}.path']))
    assert not any(k.startswith('samples/') for k in history[1])  # grids only at sample steps

    train(args, 4, resume=2)
    second = [d for d in glob.glob(str(ckpt / 'wandb' / 'offline-run-*')) if d != first]
    assert len(second) == 1
    run, config, history = recorded(second[0])
    assert run.run_id == run_id and json.loads((ckpt / RUN_FILE).read_text())['id'] == run_id
    assert sorted(history) == [3, 4] and config['total_iters'] == 4 and config['resume_iter'] == 2
    assert history[4]['samples/reference._type'] == 'image-file'

    # a run started again from step 0 in the same folder is a new wandb run
    train(args, 1)
    assert json.loads((ckpt / RUN_FILE).read_text())['id'] != run_id


def test_without_the_package_one_line_names_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb raises ImportError, as when it is not installed
    args = tiny_args(wandb='proj', checkpoint_dir=str(tmp_path / 'ckpt'))
    with pytest.raises(WandbError) as e:
        require_wandb(args)
    assert str(e.value).startswith('--wandb proj: the wandb package is not installed')
    assert '`pip install wandb`' in str(e.value) and '\n' not in str(e.value)
    assert require_wandb(tiny_args()) is None  # without --wandb nothing is imported
    from main import main
    with pytest.raises(WandbError):
        main(Munch(args, train_img_dir=str(tmp_path / 'none')))  # before the data or the networks
    assert not (tmp_path / 'ckpt').exists()
