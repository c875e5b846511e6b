"""Checkpoint files in the reference's layout: one torch.save'd dict per file, network name -> state_dict.

    ckptio = CheckpointIO('expr/checkpoints/{:06d}_nets_ema.ckpt', generator=g, mapping_network=f, style_encoder=e)
    ckptio.save(step)   # atomic: written to a temp file in the same folder, then renamed
    ckptio.load(step)   # accepts `module.` prefixes (nn.DataParallel) and a generator without `hpf.filter`;
                        # without {step}_nets_ema.ckpt, the {step}_nets_ema.safetensors of --mode export

Files are read with torch.load(weights_only=True) (core/machinery/safe_load.py): one that would run code when unpickled stops
with a message naming it, unless trust_pickle (--trust_pickle).

    run = RunCheckpoint(checkpoint_dir, nets, nets_ema, optims)   # a training run's files, with its RNG state
    run.save(step, lambda_ds); state = run.load(step)
    step = resolve_resume_step(args.resume_iter, args.checkpoint_dir)   # -1: the latest intact checkpoint

A run's save writes each file atomically, then the state file with their checksums (core/machinery/integrity.py); loading
verifies them. A save that fails (a full disk, an I/O error) removes what it wrote of its step and stops with
CheckpointWriteError naming the folder: the earlier checkpoints are untouched.

Anything with state_dict()/load_state_dict() can be registered (networks, optimisers).
"""
import errno
import os
import random
import re
import tempfile

import numpy as np
import torch

from core.machinery import integrity
from core.machinery.integrity import NET_FILES, legacy_state_globals  # noqa: F401 (legacy_state_globals: public here before)
from core.machinery.safe_load import NetworkFileError, read_network_file

# which command-line flags change the shape of which parameters: named in shape-mismatch errors
_SHAPE_FLAGS = ('--img_size, --num_domains, --w_hpf, --skip, --latent_dim, --style_dim '
                '(and --base_dim/--max_conv_dim/--hidden_dim)')


def atomic_write(fname, write, digest=False):
    """write(f) into a temp file beside fname, fsync, then rename: fname is either the old file or the complete new
    one, whatever happens (a crash, Ctrl-C, a full disk) while writing. digest: write(f) gets a write-only wrapper
    (torch.save needs no seek) and the call returns {'sha256', 'size'} of the bytes written."""
    folder = os.path.dirname(os.path.abspath(fname))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(fname) + '.', suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, 'wb') as f:
            out = integrity.HashingWriter(f) if digest else f
            write(out)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, fname)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return out.record() if digest else None


def atomic_torch_save(obj, fname):
    """torch.save through atomic_write; returns {'sha256', 'size'} of the file."""
    return atomic_write(fname, lambda f: torch.save(obj, f), digest=True)


def fsync_dir(folder):
    """Makes the renames in folder durable (a power cut could otherwise undo them); some file systems cannot."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def unwrap(module):
    """The module inside a DataParallel/DistributedDataParallel/torch.compile wrapper."""
    while True:
        if hasattr(module, 'module') and isinstance(module, torch.nn.Module):
            module = module.module
        elif hasattr(module, '_orig_mod'):
            module = module._orig_mod
        else:
            return module


def strip_module_prefix(state_dict):
    if isinstance(state_dict, dict) and state_dict and all(
            isinstance(k, str) and k.startswith('module.') for k in state_dict):
        return type(state_dict)((k[len('module.'):], v) for k, v in state_dict.items())
    return state_dict


class MissingEntryError(NetworkFileError, KeyError):
    """A file without a network that should be in it (not a network file, or another kind of one)."""

    def __str__(self):  # KeyError's str() would quote the message
        return str(self.args[0])


class CheckpointIO:
    def __init__(self, fname_template, data_parallel=False, trust_pickle=False, flag='--resume_iter', **kwargs):
        # data_parallel: kept for the reference's signature; wrappers are unwrapped automatically. trust_pickle: load
        # files that need full unpickling (--trust_pickle); flag: the flag that chose the files, for errors
        os.makedirs(os.path.dirname(fname_template) or '.', exist_ok=True)
        self.fname_template = fname_template
        self.trust_pickle = trust_pickle
        self.flag = flag
        self.module_dict = kwargs

    def register(self, **kwargs):
        self.module_dict.update(kwargs)

    def fname(self, step):
        return self.fname_template.format(step)

    def outdict(self):
        return {name: unwrap(module).state_dict() for name, module in self.module_dict.items()}

    def save(self, step):
        fname = self.fname(step)
        atomic_torch_save(self.outdict(), fname)
        return fname

    def load(self, step, strict=True):
        fname = self.fname(step)
        exported = re.sub(r'\.ckpt$', '.safetensors', fname)  # --mode export's copy, read where there is no .ckpt
        if not os.path.exists(fname) and exported != fname and os.path.exists(exported):
            fname = exported
        if not os.path.exists(fname):
            folder = os.path.dirname(fname) or '.'
            have = sorted(f for f in os.listdir(folder) if f.endswith('.ckpt')) if os.path.isdir(folder) else []
            hint = f' Checkpoints in {folder}: {", ".join(have[:8])}' if have else f' {folder} has no checkpoints.'
            raise FileNotFoundError(f'Checkpoint not found: {fname} (check --resume_iter and --checkpoint_dir).{hint}')
        module_dict = read_network_file(fname, self.flag, self.trust_pickle)
        for name in self.module_dict:  # every entry checked before any is loaded
            if not isinstance(module_dict, dict) or name not in module_dict:
                have = ', '.join(map(str, module_dict)) if isinstance(module_dict, dict) else type(module_dict).__name__
                raise MissingEntryError(f'{self.flag}: {fname} has no entry "{name}" (it has: {have}): is it a '
                                        f'checkpoint of this kind (*_nets, *_nets_ema, *_optims.ckpt)?')
        for name, module in self.module_dict.items():
            load_into(unwrap(module), strip_module_prefix(module_dict[name]), name, fname, strict=strict)
        return fname


def load_into(module, state_dict, name, fname, strict=True):
    """load_state_dict with errors that name the file, the network, the parameter and the flags that likely differ."""
    if not isinstance(module, torch.nn.Module):
        try:
            module.load_state_dict(state_dict)
        except (ValueError, KeyError, RuntimeError) as e:
            raise NetworkFileError(f'{fname}: cannot restore "{name}": {e}. Was it saved with other flags '
                                   f'({_SHAPE_FLAGS})?') from e
        return
    own = module.state_dict()
    saved_skip, built_skip = skip_variant(state_dict), skip_variant(own)
    if saved_skip is not None and saved_skip != built_skip:  # None: not a generator's state (the keys tell below)
        raise NetworkFileError(f'{fname}: "{name}" was saved with --skip {saved_skip}, but the network is built with '
                               f'--skip {built_skip}: pass --skip {saved_skip} (the generator variants differ).')
    mismatched = [f'{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}'
                  for k, v in state_dict.items() if k in own and hasattr(v, 'shape') and v.shape != own[k].shape]
    if mismatched:
        raise NetworkFileError(
            f'{fname}: "{name}" does not fit the network built from the flags: {len(mismatched)} shape mismatches, '
            f'e.g. {"; ".join(mismatched[:3])}. Likely differing flags: {_SHAPE_FLAGS}.')
    result = module.load_state_dict(state_dict, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise NetworkFileError(
            f'{fname}: "{name}" does not fit the network built from the flags: '
            f'missing {result.missing_keys[:5]} ({len(result.missing_keys)}), '
            f'unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)}). '
            f'Likely differing flags: {_SHAPE_FLAGS}.')


def skip_variant(state_dict):
    """The --skip variant a generator state dict belongs to: recorded by SkipVariantGenerator (unet, none); a state
    dict without the record (the reference's, the authors' files) is hpf. Other networks: None."""
    if not any(k.startswith('decode.') for k in state_dict):
        return None
    extra = state_dict.get('_extra_state')
    return extra.get('skip', 'hpf') if isinstance(extra, dict) else 'hpf'


# --------------------------------------------------------------------------------------------------------------------
# a training run: the reference's three files per step, and our run state written last

_TMP_FILE = re.compile(r'^\.\d{6}_(nets|nets_ema|optims|state)\.ckpt\..+\.tmp$')


class CheckpointWriteError(RuntimeError):
    """A checkpoint that could not be written (a full disk, an I/O error): one line naming the folder and the error.
    main.py exits with 2."""


def find_latest_step(checkpoint_dir):
    """Highest step with all three network/optimiser files present (0 if none), their contents unchecked."""
    steps = integrity.steps_on_disk(checkpoint_dir)
    return max((s for s, kinds in steps.items() if all(k in kinds for k in NET_FILES)), default=0)


def resolve_resume_step(resume_iter, checkpoint_dir, trust_pickle=False):
    """--resume_iter as a step: -1 means the latest intact checkpoint in checkpoint_dir (0 when there is none);
    damaged or unfinished newer steps are skipped, each named (core/machinery/integrity.py)."""
    return integrity.latest_intact_step(checkpoint_dir, trust_pickle) if resume_iter < 0 else resume_iter


def remove_leftover_temp_files(checkpoint_dir):
    """Deletes the temporary files of saves that a kill interrupted (never a file under its final name)."""
    if not os.path.isdir(checkpoint_dir):
        return []
    left = sorted(f for f in os.listdir(checkpoint_dir) if _TMP_FILE.match(f))
    for f in left:
        os.remove(os.path.join(checkpoint_dir, f))
    if left:
        print(f'{checkpoint_dir}: removed {len(left)} temporary file(s) of an interrupted save ({", ".join(left)})')
    return left


def rng_state():
    """The process RNG states in types torch.load(weights_only=True) reads: tensors, ints, floats, tuples."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(torch_rng=torch.get_rng_state(),
                numpy_rng=dict(kind=kind, keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos),
                               has_gauss=int(has_gauss), gauss=float(gauss)),
                python_rng=random.getstate(),  # (version, a tuple of 625 ints, None or a float)
                cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def set_rng_state(state):
    """The inverse of rng_state (also for the state files of earlier versions: numpy's own tuple)."""
    torch.set_rng_state(state['torch_rng'])
    np_state = state['numpy_rng']
    if isinstance(np_state, dict):
        np_state = (np_state['kind'], np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                    np_state['has_gauss'], np_state['gauss'])
    np.random.set_state(np_state)
    version, internal, gauss_next = state['python_rng']
    random.setstate((version, tuple(internal), gauss_next))
    if state.get('cuda_rng') is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda_rng'])


class RunCheckpoint:
    """The files of a run: {step}_nets.ckpt, _nets_ema.ckpt, _optims.ckpt (the reference's) and {step}_state.ckpt
    (ours: step, lambda_ds, world size, RNG states, the training set's fingerprint, the other files' checksums).
    Without optimisers (sample/eval) only _nets_ema.ckpt is read."""

    def __init__(self, checkpoint_dir, nets, nets_ema, optims=None, trust_pickle=False):
        self.checkpoint_dir = checkpoint_dir
        self.trust_pickle = trust_pickle
        trainable = {k: v for k, v in nets.items() if k != 'fan'}
        ema = {k: v for k, v in nets_ema.items() if k != 'fan'}
        template = os.path.join(checkpoint_dir, '{:06d}_%s.ckpt')
        self.ckptios = [CheckpointIO(template % 'nets_ema', trust_pickle=trust_pickle, **ema)]
        if optims is not None:
            self.ckptios = [CheckpointIO(template % 'nets', trust_pickle=trust_pickle, **trainable), self.ckptios[0],
                            CheckpointIO(template % 'optims', trust_pickle=trust_pickle, **optims)]

    def state_fname(self, step):
        return integrity.state_path(self.checkpoint_dir, step)

    def save(self, step, **state):
        """The three files, then the state file with their checksums. A marker (.{step}_saving) is there for the
        whole save, so that a save killed at any point is known as unfinished; an OSError removes the step's files
        and raises CheckpointWriteError."""
        folder, marker = self.checkpoint_dir, integrity.marker_path(self.checkpoint_dir, step)
        try:
            with open(marker, 'wb'):
                pass
            if os.path.exists(self.state_fname(step)):  # a step saved again: its old seal must not cover new files
                os.remove(self.state_fname(step))
            files = {os.path.basename(c.fname(step)): atomic_torch_save(c.outdict(), c.fname(step))
                     for c in self.ckptios}
            fsync_dir(folder)  # the three renames reach the disk before the state file that vouches for them
            state.update(step=step, files=files, **rng_state())
            atomic_torch_save(integrity.seal(state), self.state_fname(step))
            fsync_dir(folder)
        except OSError as e:
            self._remove_step(step)
            raise CheckpointWriteError(self._write_error(step, e)) from None
        try:
            os.remove(marker)
        except OSError:  # the state file is written: the step is complete whatever becomes of the marker
            pass

    def _remove_step(self, step):
        paths = [integrity.net_path(self.checkpoint_dir, step, k) for k in NET_FILES]
        paths += [self.state_fname(step), integrity.marker_path(self.checkpoint_dir, step)]
        for path in paths:
            try:
                os.remove(path)
            except OSError:
                pass

    def _write_error(self, step, e):
        name = errno.errorcode.get(e.errno, 'error') if e.errno else type(e).__name__
        where = f' ({os.path.basename(e.filename)})' if e.filename else ''
        earlier = [s for s, kinds in integrity.steps_on_disk(self.checkpoint_dir).items()
                   if 'state' in kinds and s < step]
        kept = f'the latest earlier checkpoint, step {max(earlier)}, is untouched' if earlier else \
            'there is no earlier checkpoint'
        fix = 'Free space there' if e.errno in (errno.ENOSPC, errno.EDQUOT) else 'Check the disk'
        return (f'cannot write the checkpoint of step {step} in {self.checkpoint_dir}: {name}: '
                f'{e.strerror or e}{where}; its partial files were removed and {kept}. {fix} (or choose another '
                f'--checkpoint_dir) and resume with --resume_iter -1.')

    def load(self, step, restore_rng=False):
        """Loads the networks (and optimisers) after checking them against the step's state file; with
        restore_rng, the process RNG states of the state file if there is one (an authors' checkpoint has none).
        Returns the state file's dict ({} without one)."""
        if len(self.ckptios) == 3:
            integrity.require_intact(self.checkpoint_dir, step, NET_FILES, trust_pickle=self.trust_pickle)
        else:  # sample/eval: only the EMA file, checked when the state file records it
            integrity.verify_network_file(self.ckptios[0].fname(step), '--resume_iter', self.trust_pickle)
        for ckptio in self.ckptios:
            ckptio.load(step)
        fname = self.state_fname(step)
        if not os.path.exists(fname) or not (restore_rng or len(self.ckptios) == 3):
            return {}
        state = integrity.read_state(fname, self.trust_pickle)
        if restore_rng:
            set_rng_state(state)
        return state
