"""Checksums of a run's checkpoint files: recorded when a step is saved, verified before the files are used.

    problem = check_step(checkpoint_dir, step)        # None, or why the step cannot be resumed (naming the file)
    step = latest_intact_step(checkpoint_dir)         # --resume_iter -1: skips damaged or unfinished steps, saying so
    verify_network_file(fname, '--init_from')         # translate / export / --init_from of one of our files

`{step}_state.ckpt`, written last by every save, holds the sha256 and the size of each of the step's files
(`files`) and a digest of its own contents (`state_sha256`). torch.load does not check the CRCs of its zip records,
so without them a flipped byte inside tensor data loads silently as a wrong weight. A step is intact when its state
file reads, matches its own digest, and every file it names has the recorded size and sha256.

What has no state file loads as before: the authors' files and those of the reference's runs. A step of one of our
runs without it is unfinished: a save writes `.{step}_saving` first and removes it after the state file, and a
step later than one with a state file should have one too.
"""
import hashlib
import os
import re

import numpy as np
import torch

from core.machinery.safe_load import NetworkFileError, load_torch_file

NET_FILES = ('nets', 'nets_ema', 'optims')
_STEP_FILE = re.compile(r'^(\d{6})_(nets|nets_ema|optims|state)\.ckpt$')
_CHUNK = 8 << 20

_hashed = {}   # (path, inode, size, mtime) -> record: a file is hashed once per process (resolving, then loading)
_said = set()  # messages already printed: main.py and Solver.train both resolve --resume_iter -1


class DamagedCheckpointError(NetworkFileError):
    """A checkpoint whose files do not match what was recorded when it was saved, or whose save did not finish."""


def state_path(checkpoint_dir, step):
    return os.path.join(checkpoint_dir, '%06d_state.ckpt' % step)


def marker_path(checkpoint_dir, step):
    return os.path.join(checkpoint_dir, '.%06d_saving' % step)


def net_path(checkpoint_dir, step, kind):
    return os.path.join(checkpoint_dir, '%06d_%s.ckpt' % (step, kind))


# ---------------------------------------------------------------------------------------------------------- hashing
class HashingWriter:
    """A write-only file wrapper that hashes what passes through, so that a save reads nothing back."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += memoryview(data).nbytes
        return self.f.write(data)

    def flush(self):
        self.f.flush()

    def record(self):
        return dict(sha256=self.sha.hexdigest(), size=self.size)


def file_record(path):
    """{'sha256', 'size'} of a file's bytes."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _hashed:
        sha = hashlib.sha256()
        with open(path, 'rb') as f:
            for block in iter(lambda: f.read(_CHUNK), b''):
                sha.update(block)
        _hashed[key] = dict(sha256=sha.hexdigest(), size=st.st_size)
    return _hashed[key]


def content_digest(obj):
    """sha256 of a nested structure of dicts, lists, tuples, tensors and plain values, as torch.load returns it:
    the state file's seal over its own contents (its bytes cannot hold their own hash)."""
    sha = hashlib.sha256()

    def walk(o):
        sha.update(type(o).__name__.encode() + b'\0')
        if isinstance(o, dict):
            for k in sorted(o, key=repr):
                sha.update(repr(k).encode() + b'\0')
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            sha.update(b'%d\0' % len(o))
            for v in o:
                walk(v)
        elif isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            sha.update(f'{t.dtype} {tuple(t.shape)}\0'.encode())
            sha.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            sha.update(repr(o).encode() + b'\0')
    walk(obj)
    return sha.hexdigest()


def seal(state):
    """The state dict with the digest of its contents added (written as the state file)."""
    state = {k: v for k, v in state.items() if k != 'state_sha256'}
    state['state_sha256'] = content_digest(state)
    return state


def legacy_state_globals():
    """What the state files of earlier versions need beyond plain data: numpy's RNG state was pickled as an array.
    The safe loader may rebuild arrays (under numpy 1's and numpy 2's names) and still refuses anything else."""
    core = getattr(np, '_core', None) or np.core  # numpy 2 renamed numpy.core (the old name warns)
    rebuild = core.multiarray._reconstruct
    return [(rebuild, 'numpy.core.multiarray._reconstruct'), (rebuild, 'numpy._core.multiarray._reconstruct'),
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def read_state(fname, trust_pickle=False):
    """A state file's dict, its seal checked (state files of earlier versions have none and are taken as they are).
    DamagedCheckpointError (a message without a flag: the callers add theirs) when it cannot be read or does not
    match its seal; UnsafeFileError, from the safe loader, when it names callables."""
    try:
        state = load_torch_file(fname, '', trust_pickle, allowed=legacy_state_globals())
    except NetworkFileError as e:
        if type(e) is not NetworkFileError:  # UnsafeFileError: not damage; the safe loader's message
            raise
        raise DamagedCheckpointError(f'{fname} is damaged: {str(e).split(": ", 2)[-1]}') from None
    if not isinstance(state, dict):
        raise DamagedCheckpointError(f'{fname} is not a state file (it holds a {type(state).__name__})')
    if 'state_sha256' in state and content_digest({k: v for k, v in state.items() if k != 'state_sha256'}) \
            != state['state_sha256']:
        raise DamagedCheckpointError(f'{fname} is damaged: its contents do not match the digest recorded in it '
                                     f'when it was saved')
    return state


def _mismatch(path, record):
    """Why a file differs from its record, or None."""
    if not os.path.exists(path):
        return f'{path} is missing'
    size = os.path.getsize(path)
    if size != record['size']:
        return (f'{path} is damaged: {size} bytes, {record["size"]} when it was saved '
                f'({"truncated" if size < record["size"] else "overwritten"})')
    if file_record(path)['sha256'] != record['sha256']:
        return (f'{path} is damaged: its bytes differ from those saved (sha256 {file_record(path)["sha256"][:12]}..., '
                f'recorded {record["sha256"][:12]}...)')
    return None


# ------------------------------------------------------------------------------------------------------ steps of a run
def steps_on_disk(checkpoint_dir):
    """step -> the kinds of file of that step present (nets, nets_ema, optims, state)."""
    steps = {}
    if os.path.isdir(checkpoint_dir):
        for f in os.listdir(checkpoint_dir):
            m = _STEP_FILE.match(f)
            if m:
                steps.setdefault(int(m.group(1)), set()).add(m.group(2))
    return steps


def _ours(checkpoint_dir, step, steps):
    """Whether the step belongs to a run of this project that should have written its state file: its save was
    interrupted (the marker), or an earlier step has one (a reference run resumed here has none before ours)."""
    if os.path.exists(marker_path(checkpoint_dir, step)):
        return True
    return any('state' in kinds and s < step for s, kinds in steps.items())


def check_step(checkpoint_dir, step, kinds=NET_FILES, trust_pickle=False, steps=None):
    """None when the files `kinds` of the step can be used (they match the state file, or the step has no state file
    and is not one of our runs': then whether they are all there is the caller's question); else one sentence naming
    the file at fault."""
    steps = steps_on_disk(checkpoint_dir) if steps is None else steps
    state_fname = state_path(checkpoint_dir, step)
    if not os.path.exists(state_fname):
        if os.path.exists(marker_path(checkpoint_dir, step)):
            return (f'the save of step {step} did not finish ({state_fname}, written last, is missing; '
                    f'{marker_path(checkpoint_dir, step)} is left from the save)')
        if _ours(checkpoint_dir, step, steps):
            return (f'{state_fname} is missing (every save of this run writes it last, and an earlier step has '
                    f'one): the save did not finish, or the file was removed')
        return None  # the authors' files, a reference run's: whatever is there loads as before
    try:
        state = read_state(state_fname, trust_pickle)
    except DamagedCheckpointError as e:
        return str(e)
    files = state.get('files')
    for kind in kinds:
        path = net_path(checkpoint_dir, step, kind)
        if files is None:  # a state file of an earlier version: no checksums, the files are used as they are
            if not os.path.exists(path):
                return f'{path} is missing'
            continue
        record = files.get(os.path.basename(path))
        if record is None:
            return f'{state_fname} has no checksum of {os.path.basename(path)}'
        problem = _mismatch(path, record)
        if problem:
            return problem
    return None


def say(message):
    """Prints a message once per process, on the main process only."""
    from core.machinery.distributed import is_main_process
    if message not in _said and is_main_process():
        _said.add(message)
        print(message, flush=True)


def latest_intact_step(checkpoint_dir, trust_pickle=False, report=True):
    """The latest step whose network, EMA and optimiser files are intact (0 when none is). Newer steps that are
    damaged or unfinished are skipped, each named with why; steps that are not training checkpoints (an authors'
    folder of *_nets_ema.ckpt) are passed over silently, as before. report=False: nothing printed."""
    tell = say if report else (lambda message: None)
    steps = steps_on_disk(checkpoint_dir)
    skipped = []
    for step in sorted(steps, reverse=True):
        if step == 0:
            continue
        problem = check_step(checkpoint_dir, step, NET_FILES, trust_pickle, steps)
        complete = problem is None and all(k in steps[step] for k in NET_FILES)
        if complete:
            if skipped:
                tell(f'--resume_iter -1: resuming from step {step}, the latest intact checkpoint in {checkpoint_dir}')
            return step
        if problem is not None:
            skipped.append(step)
            tell(f'--resume_iter -1: step {step} skipped: {problem}')
    if skipped:
        tell(f'--resume_iter -1: no intact checkpoint in {checkpoint_dir}: starting from step 0')
    return 0


def require_intact(checkpoint_dir, step, kinds=NET_FILES, flag='--resume_iter', trust_pickle=False):
    """check_step, as an error naming the flag, the file and the latest intact step."""
    problem = check_step(checkpoint_dir, step, kinds, trust_pickle)
    if problem is None:
        return
    hint = ''
    if kinds == NET_FILES:
        latest = latest_intact_step(checkpoint_dir, trust_pickle, report=False)
        hint = (f' The latest intact step in {checkpoint_dir} is {latest}: resume with --resume_iter {latest} '
                f'(or -1).' if latest else f' {checkpoint_dir} has no intact checkpoint.')
    raise DamagedCheckpointError(f'{flag} {step}: {problem}.{hint}')


def verify_network_file(fname, flag, trust_pickle=False):
    """For one network file (--init_from, translate, export): when a state file of the same step lies beside it and
    records it, the file must match the record; otherwise (the authors' files, a copy on its own) nothing to check."""
    m = _STEP_FILE.match(os.path.basename(fname))
    if not m or m.group(2) == 'state' or not os.path.exists(fname):  # missing: the loader's own error (or the
        return                                                          # .safetensors export read in its place)
    state_fname = state_path(os.path.dirname(fname) or '.', int(m.group(1)))
    if not os.path.exists(state_fname):
        return
    try:
        state = read_state(state_fname, trust_pickle)
    except DamagedCheckpointError as e:
        raise DamagedCheckpointError(f'{flag}: {e}; {fname} cannot be verified without it') from None
    record = (state.get('files') or {}).get(os.path.basename(fname))
    problem = record and _mismatch(fname, record)
    if problem:
        raise DamagedCheckpointError(f'{flag}: {problem} (checked against {state_fname})')
