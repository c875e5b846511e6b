"""Reading network files without running code from them.

    state = load_torch_file(fname, '--init_from', trust_pickle=args.trust_pickle)   # torch.load, weights_only=True
    nets = read_network_file(fname, '--init_from', args.trust_pickle)   # a *.ckpt or a *.safetensors (core/inference/export.py)
    meta = file_metadata(fname)   # a .safetensors file's settings and domain names ({} for a .ckpt)

torch.load unpickles, and a pickle may name any Python callable, which a full unpickler calls: a checkpoint from a
forum or a shared drive could run any code. What this project's files hold (state_dicts, optimiser states, our
state file, wing.ckpt, the ImageNet weights: tensors, dicts, lists, tuples, numbers, strings) needs no callable, and
`weights_only=True` loads exactly that. A file that names anything else stops with UnsafeFileError: the file, the
names it would call, and --trust_pickle, which reads it in full (only for files from a source one trusts).

A `*_nets_ema.safetensors` (written by `--mode export --to safetensors`) holds tensors only, by construction: keys
`<network>.<state_dict key>`, and in its metadata (strings) the settings, the domain names and the few non-tensor
state entries (the --skip variant's `_extra_state`) as JSON.
"""
import contextlib
import json
import os
import pickle
import re
import sys

import torch

from core.data_loader import DataError

# what the weights-only unpickler says when a file names a callable it does not allow
_GLOBAL = re.compile(r'GLOBAL (\S+) was not an allowed global')


class NetworkFileError(DataError, RuntimeError):
    """A file that cannot be read, or used, as the network file it should be: the message names the file and the
    flag. A DataError, so that main.py reports it as one line; a RuntimeError, as the loaders raised before."""


class UnsafeFileError(NetworkFileError):
    """A file whose loading would call Python functions named inside it (full unpickling)."""


def unsafe_globals(fname, error=None):
    """The callables a torch file names beyond what weights_only=True allows, without running any: every one for
    the zip format (torch >= 2.5 reads the pickle's opcodes), else the first, from the safe loader's error."""
    names = []
    finder = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if finder is not None:
        try:
            names = list(finder(fname))
        except Exception:  # the legacy (pre-1.6) format or a damaged file: the error's name below
            names = []
    if error is not None:
        names += [n for n in _GLOBAL.findall(str(error)) if n not in names]
    return names


def _reason(e):
    """The first sentence of an exception: torch's messages go on for lines."""
    text = str(e).replace('\x1b[1m', '').replace('\x1b[0m', '').strip()
    if 'WeightsUnpickler error:' in text:
        text = text.split('WeightsUnpickler error:', 1)[1].strip()
    return f'{type(e).__name__}: {text.split(". ")[0].splitlines()[0] if text else ""}'.rstrip(': ')


def load_torch_file(fname, flag, trust_pickle=False, allowed=()):
    """torch.load(fname) on the CPU with weights_only=True. Errors (NetworkFileError, one line naming fname and
    flag): a file that is not a torch file or is truncated; a file that needs full unpickling (UnsafeFileError,
    unless trust_pickle). allowed: callables (or (callable, name) pairs) the safe loader may call besides its own,
    via torch.serialization.safe_globals (torch >= 2.5): still the safe loader, which refuses anything else."""
    if not os.path.isfile(fname):
        raise FileNotFoundError(f'{flag}: no such file: {fname}')
    safe_globals = getattr(torch.serialization, 'safe_globals', None)
    try:
        with safe_globals(list(allowed)) if allowed and safe_globals else contextlib.nullcontext():
            return torch.load(fname, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        names = unsafe_globals(fname, e)
        if not names:  # the safe loader stopped for another reason: not a pickle it can read at all
            raise NetworkFileError(
                f'{flag}: cannot read {fname}: not a file written by torch.save, or damaged ({_reason(e)})') from None
        if not trust_pickle:
            raise UnsafeFileError(
                f'{flag}: {fname} is not plain weights: loading it would unpickle {", ".join(names)}, which can run '
                f'any code; it was not loaded. If the file comes from a source you trust, pass --trust_pickle to '
                f'load it in full.') from None
        print(f'--trust_pickle: reading {fname} in full (it names {", ".join(names)})', file=sys.stderr)
    except Exception as e:  # truncated zip, not a torch file (KeyError, EOFError, RuntimeError...)
        raise NetworkFileError(
            f'{flag}: cannot read {fname}: not a file written by torch.save, or truncated ({_reason(e)})') from None
    try:
        return torch.load(fname, map_location='cpu', weights_only=False)
    except Exception as e:
        raise NetworkFileError(f'{flag}: cannot read {fname} ({_reason(e)})') from e


# --------------------------------------------------------------------------------------------------------- safetensors

SAFETENSORS_FORMAT = 'stargan-v2 networks'  # metadata['format'] of the files core/inference/export.py writes


def is_safetensors(fname):
    return str(fname).endswith('.safetensors')


def read_safetensors(fname, flag):
    """(name -> state_dict, metadata) of a .safetensors network file."""
    from safetensors import safe_open
    if not os.path.isfile(fname):
        raise FileNotFoundError(f'{flag}: no such file: {fname}')
    try:
        with safe_open(fname, framework='pt', device='cpu') as f:
            meta = dict(f.metadata() or {})
            nets = {}
            for key in f.keys():
                net, _, name = key.partition('.')
                nets.setdefault(net, {})[name] = f.get_tensor(key)
    except Exception as e:  # SafetensorError: not a safetensors file, a truncated one, a damaged header
        raise NetworkFileError(
            f'{flag}: cannot read {fname}: not a safetensors file, or truncated ({_reason(e)})') from None
    try:
        extra = json.loads(meta.get('extra_state', '{}'))
    except ValueError as e:
        raise NetworkFileError(f'{flag}: {fname}: its metadata "extra_state" is not JSON ({e})') from None
    for net, state in extra.items():
        nets.setdefault(net, {})['_extra_state'] = state
    return nets, meta


def read_network_file(fname, flag, trust_pickle=False):
    """What a network file holds (name -> state_dict for the networks' files): a .safetensors file's tensors, else
    torch.load with weights_only=True (load_torch_file)."""
    if is_safetensors(fname):
        return read_safetensors(fname, flag)[0]
    return load_torch_file(fname, flag, trust_pickle)


def file_metadata(fname):
    """The metadata of a .safetensors network file, its JSON values decoded (settings, domains); {} for others."""
    if not is_safetensors(fname) or not os.path.isfile(fname):
        return {}
    from safetensors import safe_open
    try:
        with safe_open(fname, framework='pt', device='cpu') as f:
            meta = dict(f.metadata() or {})
    except Exception:  # reading the tensors reports it, naming the flag
        return {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out
