"""Network files are read with torch.load(weights_only=True) (core/machinery/safe_load.py): a file whose unpickling would run
code (here: create a marker file) is refused at every entry point, and the marker never appears; --trust_pickle loads
it; the layouts of the authors' files (legacy serialisation, OrderedDicts, `module.` prefixes) and our state file
load without it."""
import os
import random
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_args
from core.checkpoint import CheckpointIO, RunCheckpoint, legacy_state_globals, rng_state, set_rng_state
from core.machinery.safe_load import NetworkFileError, UnsafeFileError, load_torch_file
from core.model import build_model

pytestmark = pytest.mark.usefixtures('one_thread')

GFE = ('generator', 'mapping_network', 'style_encoder')


class CreatesFile:
    """Unpickled in full, this calls open(path, 'w'): the marker file appears. What a malicious checkpoint could do,
    made harmless."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


def add_payload(fname, marker):
    """The file at fname with one more entry whose unpickling creates marker (the issue's attack)."""
    raw = torch.load(fname, weights_only=True)
    raw['extra'] = CreatesFile(marker)
    torch.save(raw, fname)
    return fname


def save_nets_ema(folder, step=10, **kw):
    torch.manual_seed(0)
    args = tiny_args(**kw)
    _, ema = build_model(args)
    CheckpointIO(os.path.join(folder, '{:06d}_nets_ema.ckpt'), **{k: ema[k] for k in GFE}).save(step)
    return os.path.join(folder, f'{step:06d}_nets_ema.ckpt'), ema


@pytest.fixture
def marker(tmp_path):
    return tmp_path / 'MARKER'


def refused(marker, call):
    with pytest.raises(UnsafeFileError) as e:
        call()
    assert not marker.exists(), 'the payload ran'
    msg = str(e.value)
    assert 'io.open' in msg and '--trust_pickle' in msg
    return msg


# ------------------------------------------------------------------------------------------------ the entry points

def test_init_from_refuses_and_writes_nothing(tmp_path, marker):
    from core.files.finetune import init_from
    from main import main
    fname = add_payload(save_nets_ema(tmp_path)[0], marker)
    nets, ema = build_model(tiny_args())
    msg = refused(marker, lambda: init_from(nets, ema, tiny_args(), fname))
    assert msg.startswith(f'--init_from: {fname} ')
    args = tiny_args(init_from=fname, checkpoint_dir=str(tmp_path / 'run'), train_img_dir=str(tmp_path / 'none'))
    refused(marker, lambda: main(args))  # stops before the data, the run folder or args.json
    assert not (tmp_path / 'run').exists()


def test_trust_pickle_loads_the_file(tmp_path, marker):
    """The flag does what it says: the file loads in full (and the payload runs)."""
    from core.files.finetune import init_from
    fname = add_payload(save_nets_ema(tmp_path)[0], marker)
    nets, ema = build_model(tiny_args())
    init_from(nets, ema, tiny_args(trust_pickle=True), fname)
    assert marker.exists()
    marker.unlink()


def test_translate_and_the_api_refuse(tmp_path, marker):
    from core.inference.translate import Translator, translate_cli
    from core.config import parse_args
    fname = add_payload(save_nets_ema(tmp_path / 'ckpt')[0], marker)
    refused(marker, lambda: Translator.from_checkpoint(fname))
    args = parse_args(['--mode', 'translate', '--checkpoint_dir', str(tmp_path / 'ckpt'), '--inp', str(tmp_path),
                       '--trg_domain', '0', '--out_dir', str(tmp_path / 'out')])
    msg = refused(marker, lambda: translate_cli(args, torch.device('cpu')))
    assert msg.startswith('--checkpoint_dir: ') and not (tmp_path / 'out').exists()
    # the command line: one line naming the file and the flag, exit code 2
    p = subprocess.run([sys.executable, 'main.py', '--mode', 'translate', '--device', 'cpu', '--checkpoint_dir',
                        str(tmp_path / 'ckpt'), '--inp', str(tmp_path), '--trg_domain', '0', '--out_dir',
                        str(tmp_path / 'out')], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 2 and not marker.exists()
    assert p.stderr.strip().startswith('error: --checkpoint_dir:') and '--trust_pickle' in p.stderr
    assert 'Traceback' not in p.stderr


@pytest.mark.parametrize('mode', ['sample', 'eval'])
def test_sample_and_eval_refuse(tmp_path, marker, mode):
    from core.solver import Solver
    add_payload(save_nets_ema(tmp_path)[0], marker)
    solver = Solver(tiny_args(mode=mode, checkpoint_dir=str(tmp_path), resume_iter=10), 'cpu')
    msg = refused(marker, solver.evaluate if mode == 'eval' else lambda: solver.sample(None))
    assert msg.startswith('--resume_iter: ')


@pytest.mark.parametrize('kind', ['nets', 'nets_ema', 'optims', 'state'])
def test_resume_refuses_every_file_of_a_run(tmp_path, marker, kind):
    from core.machinery import integrity
    from core.solver import Solver
    args = tiny_args(checkpoint_dir=str(tmp_path))
    torch.manual_seed(0)
    solver = Solver(args, 'cpu')
    solver.checkpoint.save(2, lambda_ds=1.0, world_size=1)
    fname = add_payload(str(tmp_path / f'000002_{kind}.ckpt'), marker)
    if kind != 'state':
        # a file changed after its save no longer matches the checksum in the state file: refused unread
        with pytest.raises(integrity.DamagedCheckpointError, match=f'000002_{kind}.ckpt is damaged'):
            Solver(args, 'cpu').checkpoint.load(2, restore_rng=True)
        assert not marker.exists()
        # a state file forged to match it: the safe loader refuses the file
        state_fname = str(tmp_path / '000002_state.ckpt')
        state = integrity.read_state(state_fname)
        state['files'][os.path.basename(fname)] = integrity.file_record(fname)
        torch.save(integrity.seal(state), state_fname)
    refused(marker, lambda: Solver(args, 'cpu').checkpoint.load(2, restore_rng=True))


def test_wing_path_refuses(tmp_path, marker, random_wing):
    from core.wing import FAN, FaceAligner
    add_payload(random_wing, marker)
    msg = refused(marker, lambda: FAN(fname_pretrained=random_wing))
    assert msg.startswith('--wing_path: ')
    refused(marker, lambda: build_model(tiny_args(w_hpf=1, wing_path=random_wing)))
    # the mean landmarks: np.load without allow_pickle reads plain arrays only
    np.savez(tmp_path / 'lm.npz', mean=np.random.default_rng(0).random((98, 2)) * 256)
    refused(marker, lambda: FaceAligner(random_wing, str(tmp_path / 'lm.npz'), 32, 'cpu'))


# ------------------------------------------------------------------------------------------------ what still loads

def test_authors_layouts_load_without_the_flag(tmp_path, random_wing):
    """The authors' files: torch.save of the old (non-zip) format, OrderedDict state dicts, `module.` prefixes
    (nn.DataParallel), Adam states, wing.ckpt's {'state_dict': ...}: all plain data, loaded with weights_only=True."""
    from core.wing import FAN
    torch.manual_seed(0)
    nets, ema = build_model(tiny_args())
    optims = {k: torch.optim.Adam(nets[k].parameters(), lr=1e-4, betas=(0.0, 0.99)) for k in nets}
    for opt in optims.values():
        for group in opt.param_groups:
            for p in group['params']:
                p.grad = torch.ones_like(p)
        opt.step()

    def legacy(obj, name):
        torch.save(obj, tmp_path / name, _use_new_zipfile_serialization=False)

    prefixed = lambda net: OrderedDict(('module.' + k, v) for k, v in net.state_dict().items())  # noqa: E731
    legacy({k: prefixed(ema[k]) for k in GFE}, '100000_nets_ema.ckpt')
    legacy({k: prefixed(nets[k]) for k in nets}, '100000_nets.ckpt')
    legacy({k: o.state_dict() for k, o in optims.items()}, '100000_optims.ckpt')
    legacy({'state_dict': torch.load(random_wing, weights_only=True)['state_dict']}, 'wing.ckpt')
    torch.manual_seed(1)
    nets2, ema2 = build_model(tiny_args())
    optims2 = {k: torch.optim.Adam(nets2[k].parameters(), lr=1e-4) for k in nets2}
    RunCheckpoint(str(tmp_path), nets2, ema2, optims2).load(100000)
    for k in nets:
        assert all(torch.equal(a, b) for a, b in zip(nets[k].state_dict().values(), nets2[k].state_dict().values()))
        assert optims2[k].state_dict()['param_groups'][0]['betas'] == (0.0, 0.99)
    for k in GFE:
        assert all(torch.equal(a, b) for a, b in zip(ema[k].state_dict().values(), ema2[k].state_dict().values()))
    fan = FAN(fname_pretrained=str(tmp_path / 'wing.ckpt'))
    wing = torch.load(random_wing, weights_only=True)['state_dict']
    assert torch.equal(fan.conv1.conv.weight, wing['conv1.conv.weight'])


def test_state_file_is_plain_data_and_restores_the_rngs_exactly(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    np.random.standard_normal()  # numpy holds a cached Gaussian: part of the state
    nets, ema = build_model(tiny_args())
    run = RunCheckpoint(str(tmp_path), nets, ema, {})
    run.save(1, lambda_ds=0.5)
    expected = torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)]
    state = torch.load(tmp_path / '000001_state.ckpt', weights_only=True)  # no error: plain data
    assert state['step'] == 1 and state['lambda_ds'] == 0.5
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    run.load(1, restore_rng=True)
    got = torch.rand(5), np.random.standard_normal(5), [random.random() for _ in range(5)]
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_state_file_of_earlier_versions_loads(tmp_path):
    """Earlier versions pickled numpy's RNG tuple (an array): the safe loader may rebuild numpy arrays for state files
    and loads it without the flag; it still refuses anything more."""
    np.random.seed(5)
    old = dict(step=1, lambda_ds=1.0, torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state(),
               python_rng=random.getstate(), cuda_rng=None)
    torch.save(old, tmp_path / 'old_state.ckpt')
    expected = np.random.rand(3)
    np.random.seed(6)
    set_rng_state(load_torch_file(str(tmp_path / 'old_state.ckpt'), '--resume_iter', allowed=legacy_state_globals()))
    assert np.array_equal(np.random.rand(3), expected)
    old['extra'] = CreatesFile(tmp_path / 'MARKER')
    torch.save(old, tmp_path / 'old_state.ckpt')
    with pytest.raises(UnsafeFileError, match='io.open'):
        load_torch_file(str(tmp_path / 'old_state.ckpt'), '--resume_iter', allowed=legacy_state_globals())
    assert not (tmp_path / 'MARKER').exists()


def test_rng_state_round_trip_in_process():
    random.seed(1)
    np.random.seed(1)
    s = rng_state()
    a = random.random(), np.random.rand()
    set_rng_state(s)
    assert (random.random(), np.random.rand()) == a


def test_unreadable_files_are_one_clear_error(tmp_path):
    (tmp_path / 'notes.ckpt').write_text('not a checkpoint')
    torch.save({'a': torch.ones(100)}, tmp_path / 'full.ckpt')
    data = (tmp_path / 'full.ckpt').read_bytes()
    (tmp_path / 'cut.ckpt').write_bytes(data[:len(data) // 2])
    for name in ('notes.ckpt', 'cut.ckpt'):
        with pytest.raises(NetworkFileError, match=rf'^--flag: cannot read .*{name}: not a file written by torch.save'):
            load_torch_file(str(tmp_path / name), '--flag')
    with pytest.raises(FileNotFoundError, match='--flag: no such file'):
        load_torch_file(str(tmp_path / 'missing.ckpt'), '--flag')
