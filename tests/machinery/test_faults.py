"""Faults a long run meets, injected into tiny training runs (main.py's command line, 32 px, narrow networks):

- kill -9 at each write point of a save (inside a temporary file, after it is written, between the renames, before
  and inside the state file), one after another in one chain of runs, each resumed with --resume_iter -1;
- damaged files: a flipped bit inside tensor data, a truncated file, a missing state file;
- a full disk (ENOSPC) and an I/O error (EIO) at a write;
- a training set that gained images since the run started.

Each chain ends bit-identical (the sha256 of every file of the last step) to a run never interrupted, or stops
with one message naming what is wrong, and the last complete checkpoint is never lost.

The runs are forked from a fork server that has imported torch and the project once (a fresh interpreter costs ~4 s
on the 2-core CI machine, a fork a few ms). The faults come from outside the project code: the child replaces
core.checkpoint's `os` with a proxy whose fdopen/fsync/replace kill the process or raise where asked.
"""
import errno
import multiprocessing
import os
import runpy
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO
from core.machinery import integrity

STEPS = 8
FLAGS = ['--mode', 'train', '--device', 'cpu', '--img_size', '32', '--base_dim', '8', '--max_conv_dim', '16',
         '--hidden_dim', '16', '--style_dim', '16', '--latent_dim', '8', '--w_hpf', '0', '--num_domains', '2',
         '--batch_size', '2', '--val_batch_size', '2', '--num_workers', '0', '--print_every', '1',
         '--sample_every', '0', '--save_every', '1', '--eval_every', '0', '--ds_iter', '10', '--num_threads', '1',
         '--total_iters', str(STEPS)]


# ------------------------------------------------------------------------------------------------- in the child
class _FaultyFile:
    """A temporary file whose first write puts half its bytes on disk, then faults."""

    def __init__(self, f, fault):
        self.f, self.fault = f, fault

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        self.fault()

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.f.__exit__(*exc)


def _install_fault(spec):
    """spec 'ACTION:POINT:FILE': ACTION kill (SIGKILL), enospc or eio (an OSError); POINT write (inside the temporary
    file), fsync, after_tmp (written, not yet renamed) or after_rename; FILE a basename (000004_nets.ckpt)."""
    import core.checkpoint as checkpoint
    action, point, name = spec.split(':')
    real = os

    def fault():
        if action == 'kill':
            os.kill(os.getpid(), signal.SIGKILL)
        code = dict(enospc=errno.ENOSPC, eio=errno.EIO)[action]
        raise OSError(code, os.strerror(code))

    def target(fd):  # the temporary file behind fd: .000004_nets.ckpt.XXXX.tmp
        return os.path.basename(real.readlink(f'/proc/self/fd/{fd}')).startswith(f'.{name}.')

    class FaultyOS:
        def __getattr__(self, attr):
            return getattr(real, attr)

        def fdopen(self, fd, *a, **k):
            f = real.fdopen(fd, *a, **k)
            return _FaultyFile(f, fault) if point == 'write' and target(fd) else f

        def fsync(self, fd):
            if point == 'fsync' and target(fd):
                fault()
            real.fsync(fd)

        def replace(self, src, dst):
            hit = os.path.basename(dst) == name
            if hit and point == 'after_tmp':
                fault()
            real.replace(src, dst)
            if hit and point == 'after_rename':
                fault()
    checkpoint.os = FaultyOS()


def _child(argv, log, fault):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    torch.set_num_threads(1)
    if fault:
        _install_fault(fault)
    sys.argv = ['main.py', *argv]
    os.chdir(REPO)
    runpy.run_path(str(REPO / 'main.py'), run_name='__main__')


# ------------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope='module')
def ctx():
    ctx = multiprocessing.get_context('forkserver')
    ctx.set_forkserver_preload(['torch', 'torchvision', 'core.solver', 'core.data_loader', 'core.config'])
    return ctx


def run(ctx, root, name, data, *flags, fault=None, timeout=120):
    """main.py with the flags in a forked child; (exit code, its output). The checkpoint folder is root/name."""
    argv = FLAGS + ['--train_img_dir', str(data / 'train'), '--val_img_dir', str(data / 'val'),
                    '--checkpoint_dir', str(root / name), '--sample_dir', str(root / f'{name}_samples'), *flags]
    log = root / f'{name}.{len(list(root.glob(f"{name}.*.log")))}.log'
    p = ctx.Process(target=_child, args=(argv, str(log), fault))
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        raise AssertionError(f'no exit within {timeout} s:\n{log.read_text()[-4000:]}')
    return p.exitcode, log.read_text()


def records(folder, step):
    """The sha256 of the step's network, EMA and optimiser files, as its state file recorded them."""
    files = integrity.read_state(integrity.state_path(str(folder), step))['files']
    return {name[7:-len('.ckpt')]: rec['sha256'] for name, rec in files.items()}


def assert_same_end(folder, straight):
    """The last step's files are byte for byte those of the uninterrupted run."""
    ours = {k: integrity.file_record(integrity.net_path(str(folder), STEPS, k))['sha256'] for k in integrity.NET_FILES}
    assert ours == records(straight, STEPS), (folder, ours, records(straight, STEPS))
    assert integrity.check_step(str(folder), STEPS) is None


def messages(out):
    return [line for line in out.splitlines() if '--resume_iter' in line or 'removed' in line or 'error' in line]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from core.demo.data import make_demo_dataset
    return Path(make_demo_dataset(str(tmp_path_factory.mktemp('fault_data')), n_train=4, n_val=2, size=32))


@pytest.fixture(scope='module')
def straight(ctx, data, tmp_path_factory):
    """The uninterrupted run: 8 steps, a checkpoint at each."""
    root = tmp_path_factory.mktemp('faults')
    t0 = time.time()
    rc, out = run(ctx, root, 'straight', data)
    assert rc == 0, out[-4000:]
    print(f'uninterrupted run: {time.time() - t0:.1f} s')
    return root, root / 'straight'


def copy_run(straight_dir, dst, upto):
    """A copy of the uninterrupted run's folder holding its steps up to `upto` only."""
    shutil.copytree(straight_dir, dst)
    for f in dst.iterdir():
        if f.name[:6].isdigit() and int(f.name[:6]) > upto:
            f.unlink()
    return dst


# ------------------------------------------------------------------------------------------------- tests
# one kill per save, at steps 1, 2, ...: the first inside the very first save (no earlier checkpoint to fall back on)
KILL_POINTS = [('write', 'nets'), ('after_tmp', 'nets'), ('after_rename', 'nets'), ('after_rename', 'nets_ema'),
               ('after_rename', 'optims'), ('write', 'state'), ('after_tmp', 'state')]


def test_kill_at_every_write_point_resumes_to_the_same_run(ctx, data, straight):
    root, straight_dir = straight
    folder = root / 'killed'
    for step, (point, kind) in enumerate(KILL_POINTS, start=1):  # steps 1 to 7 of 8
        name = f'{step:06d}_{kind}.ckpt'
        rc, out = run(ctx, root, 'killed', data, '--resume_iter', '-1', fault=f'kill:{point}:{name}')
        assert rc == -signal.SIGKILL, out[-4000:]
        # the killed save is known as unfinished; the step before it is complete and untouched
        problem = integrity.check_step(str(folder), step)
        assert problem is not None and f'the save of step {step} did not finish' in problem, (point, kind, problem)
        assert integrity.latest_intact_step(str(folder), report=False) == step - 1
        if step > 1:
            assert records(folder, step - 1) == records(straight_dir, step - 1)
        left = sorted(f.name for f in folder.iterdir() if f.name.endswith('.tmp'))
        assert bool(left) == (point in ('write', 'after_tmp')), (point, kind, left)
    rc, out = run(ctx, root, 'killed', data, '--resume_iter', '-1')
    assert rc == 0, out[-4000:]
    said = messages(out)
    assert f'--resume_iter -1: step {STEPS - 1} skipped: the save of step {STEPS - 1} did not finish' in out, said
    assert f'resuming from step {STEPS - 2}, the latest intact checkpoint' in out, said
    assert f'Start training from step {STEPS - 2}' in out
    assert not [f for f in folder.iterdir() if f.name.endswith('.tmp') or f.name.endswith('_saving')]
    assert_same_end(folder, straight_dir)


def flip_a_bit_in_tensor_data(fname):
    """Flips one bit in the middle of the largest tensor's bytes (the zip records are stored uncompressed)."""
    state = torch.load(fname, weights_only=True)
    tensors = [t for net in state.values() for t in net.values() if isinstance(t, torch.Tensor)]
    blob = max(tensors, key=torch.Tensor.numel).contiguous().numpy().tobytes()
    raw = bytearray(Path(fname).read_bytes())
    at = raw.find(blob) + len(blob) // 2
    assert at > len(blob) // 2
    raw[at] ^= 0x10
    Path(fname).write_bytes(bytes(raw))


def test_damaged_files_are_named_and_skipped(ctx, data, straight):
    """A flipped bit (step 8), a truncated file (step 7), a missing state file (step 6): an explicit resume stops
    naming the file; --resume_iter -1 skips the three, says why, resumes from step 5 and ends as the straight run."""
    root, straight_dir = straight
    folder = copy_run(straight_dir, root / 'damaged', STEPS)
    flip_a_bit_in_tensor_data(folder / '000008_nets.ckpt')
    # the danger: the damaged file loads without a word
    torch.load(folder / '000008_nets.ckpt', weights_only=True)
    optims = folder / '000007_optims.ckpt'
    optims.write_bytes(optims.read_bytes()[:optims.stat().st_size - 1000])
    (folder / '000006_state.ckpt').unlink()

    rc, out = run(ctx, root, 'damaged', data, '--resume_iter', '8', '--total_iters', '9')
    assert rc == 2, out[-4000:]
    error = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(error) == 1 and 'Traceback' not in out, out[-4000:]
    assert f'--resume_iter 8: {folder}/000008_nets.ckpt is damaged: its bytes differ from those saved' in error[0]
    assert 'The latest intact step' in error[0] and 'is 5: resume with --resume_iter 5' in error[0]

    rc, out = run(ctx, root, 'damaged', data, '--resume_iter', '-1')
    assert rc == 0, out[-4000:]
    said = messages(out)
    assert any('step 8 skipped' in s and '000008_nets.ckpt is damaged' in s for s in said), said
    assert any('step 7 skipped' in s and '000007_optims.ckpt is damaged' in s and 'truncated' in s for s in said), said
    assert any('step 6 skipped' in s and '000006_state.ckpt is missing' in s for s in said), said
    assert 'resuming from step 5, the latest intact checkpoint' in out and 'Start training from step 5' in out
    assert_same_end(folder, straight_dir)


def test_full_disk_and_io_error(ctx, data, straight):
    """ENOSPC inside a file of step 6 and EIO at the fsync of its state file: exit 2 with one line naming the folder
    and the error, nothing of step 6 left (no temporary file either), step 5 intact; then the run resumes to the
    straight run's end."""
    root, straight_dir = straight
    folder = copy_run(straight_dir, root / 'full', 4)
    for fault, code in (('enospc:write:000006_nets_ema.ckpt', 'ENOSPC: No space left on device'),
                        ('eio:fsync:000006_state.ckpt', 'EIO: Input/output error')):
        rc, out = run(ctx, root, 'full', data, '--resume_iter', '-1', fault=fault)
        assert rc == 2, out[-4000:]
        error = [line for line in out.splitlines() if line.startswith('error:')]
        assert len(error) == 1 and 'Traceback' not in out, out[-4000:]
        assert error[0].startswith(f'error: cannot write the checkpoint of step 6 in {folder}: {code}'), error
        assert 'the latest earlier checkpoint, step 5, is untouched' in error[0]
        assert sorted(f.name for f in folder.iterdir() if f.name[:6] == '000006' or f.name.startswith('.')) == []
        assert integrity.latest_intact_step(str(folder), report=False) == 5
        assert records(folder, 5) == records(straight_dir, 5)
    rc, out = run(ctx, root, 'full', data, '--resume_iter', '-1')
    assert rc == 0, out[-4000:]
    assert 'Start training from step 5' in out
    assert_same_end(folder, straight_dir)


def test_changed_training_set_stops_unless_allowed(ctx, data, straight, tmp_path):
    root, straight_dir = straight
    folder = copy_run(straight_dir, root / 'changed', STEPS)
    new_data = Path(shutil.copytree(data, tmp_path / 'data'))
    for k in (4, 5):  # two images added to a domain
        shutil.copy(new_data / 'train' / 'square' / '0000.png', new_data / 'train' / 'square' / f'{k:04d}.png')
    (new_data / 'train' / 'triangle' / '0003.png').unlink()  # and one removed from the other

    rc, out = run(ctx, root, 'changed', new_data, '--resume_iter', '-1', '--total_iters', '9')
    assert rc == 2, out[-4000:]
    error = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(error) == 1, out[-4000:]
    assert f'--train_img_dir {new_data}/train: the training set changed since step 8 was saved' in error[0]
    assert 'domain "square": 4 -> 6 images, 2 added (square/0004.png, square/0005.png)' in error[0]
    assert 'domain "triangle": 4 -> 3 images, 1 removed (triangle/0003.png)' in error[0]
    assert '--allow_data_change' in error[0]
    assert not (folder / '000009_nets.ckpt').exists()

    rc, out = run(ctx, root, 'changed', new_data, '--resume_iter', '-1', '--total_iters', '9', '--allow_data_change')
    assert rc == 0, out[-4000:]
    assert 'continuing: from step 8 on, the data order is the new set\'s' in out
    state = integrity.read_state(integrity.state_path(str(folder), 9))
    assert {d: e['count'] for d, e in state['data'].items()} == {'square': 6, 'triangle': 3}
    assert state['world_size'] == 1


def test_a_failed_sample_step_costs_no_training(ctx, data, straight):
    """The first sample grid's file name taken by a folder: the run stops at step 3 (no --save_every step before
    it) with one line naming the job and the file, exit 2, no traceback, and a complete checkpoint of step 3;
    --resume_iter -1 then goes on from step 3 to the straight run's end, bit for bit."""
    root, straight_dir = straight
    folder, samples = root / 'sampled', root / 'sampled_samples'
    (samples / '000003_cycle_consistency.jpg').mkdir(parents=True)
    rc, out = run(ctx, root, 'sampled', data, '--sample_every', '3', '--save_every', '0')
    assert rc == 2, out[-4000:]
    error = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(error) == 1 and 'Traceback' not in out, out[-4000:]
    assert error[0].startswith(f'error: the sample grids failed at step 3: EISDIR: Is a directory '
                               f'({samples}/000003_cycle_consistency.jpg); training stopped, the checkpoint of step 3 '
                               f'is saved'), error
    assert integrity.latest_intact_step(str(folder), report=False) == 3
    assert integrity.check_step(str(folder), 3) is None
    assert records(folder, 3) == records(straight_dir, 3)  # the step it reached, as the straight run has it
    (samples / '000003_cycle_consistency.jpg').rmdir()
    rc, out = run(ctx, root, 'sampled', data, '--sample_every', '3', '--save_every', '0', '--resume_iter', '-1')
    assert rc == 0, out[-4000:]
    assert 'Start training from step 3' in out
    assert (samples / '000006_reference.jpg').is_file() and (samples / 'losses.png').is_file()
    assert_same_end(folder, straight_dir)


def test_an_unwritable_sample_folder_is_named_before_training(ctx, data, tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('a file where the folder should be')
    rc, out = run(ctx, tmp_path, 'unwritable', data, '--sample_every', '3', '--sample_dir', str(blocker / 'samples'))
    assert rc == 2, out[-4000:]
    error = [line for line in out.splitlines() if line.startswith('error:')]
    assert len(error) == 1 and 'Traceback' not in out, out[-4000:]
    assert error[0].startswith(f'error: --sample_dir {blocker}/samples: cannot write there (ENOTDIR'), error
    assert 'Start training' not in out and not (tmp_path / 'unwritable' / '000001_nets.ckpt').exists()
