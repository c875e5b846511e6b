"""What a resumed run must share with the run it continues: the training set and (said, not required) the number
of processes.

    data = fingerprint(loader, root)             # of the source loader's files: per domain, names and sizes
    check_resume(state, data, args, step)        # DataChangedError naming what changed, unless --allow_data_change

The data stream is a function of the sorted file list (core/data_loader.py), so a folder that gained or lost images
since the run started gives other batches from the resumed step on: a different run, without a word, before this.
The state file of every step records, per domain, the count, the total size, a sha256 of the sorted
`relative path<TAB>size` lines and those lines themselves (zlib, for the message's examples: ~150 KB for CelebA-HQ).
A file whose contents changed at the same size is not noticed: reading every image at each start would cost more
than the check is worth.
"""
import hashlib
import os
import zlib

import torch

from core.data_loader import DataError


class DataChangedError(DataError):
    """The training set differs from the one the checkpoint was trained on."""


def fingerprint(loader, root):
    """{domain: {count, bytes, sha256, listing}} of a training loader's files (the files it draws from, after
    --skip_bad_images), by path relative to root; None for a loader without files (the tests' fakes)."""
    dataset, domains = getattr(loader, 'dataset', None), getattr(loader, 'domains', None)
    if dataset is None or domains is None:
        return None
    files = {d: [] for d in domains}
    for fname, label in zip(dataset.samples, dataset.targets):
        files[domains[label]].append(fname)
    out = {}
    for domain, fnames in files.items():
        lines = sorted(f'{os.path.relpath(f, root)}\t{os.path.getsize(f)}' for f in fnames)
        text = '\n'.join(lines).encode()
        out[domain] = dict(count=len(lines), bytes=sum(int(line.rsplit('\t', 1)[1]) for line in lines),
                           sha256=hashlib.sha256(text).hexdigest(),
                           listing=torch.frombuffer(bytearray(zlib.compress(text, 6)), dtype=torch.uint8))
    return out


def _lines(entry):
    text = zlib.decompress(entry['listing'].numpy().tobytes()).decode() if 'listing' in entry else ''
    return dict(line.rsplit('\t', 1) for line in text.split('\n') if line)


def _examples(names, k=3):
    names = sorted(names)
    return ', '.join(names[:k]) + (', ...' if len(names) > k else '')


def describe_change(old, new):
    """What differs between two fingerprints, as phrases ([] when nothing does)."""
    changes = []
    for domain in sorted(set(old) - set(new)):
        changes.append(f'domain "{domain}" is gone ({old[domain]["count"]} images)')
    for domain in sorted(set(new) - set(old)):
        changes.append(f'domain "{domain}" is new ({new[domain]["count"]} images)')
    for domain in sorted(set(old) & set(new)):
        a, b = old[domain], new[domain]
        if a['sha256'] == b['sha256']:
            continue
        la, lb = _lines(a), _lines(b)
        added, removed = set(lb) - set(la), set(la) - set(lb)
        resized = [n for n in set(la) & set(lb) if la[n] != lb[n]]
        parts = []
        if added:
            parts.append(f'{len(added)} added ({_examples(added)})')
        if removed:
            parts.append(f'{len(removed)} removed ({_examples(removed)})')
        if resized:
            parts.append(f'{len(resized)} of another size ({_examples(resized)})')
        changes.append(f'domain "{domain}": {a["count"]} -> {b["count"]} images' +
                       (f', {"; ".join(parts)}' if parts else ''))
    return changes


def check_resume(state, data, args, step):
    """Stops (DataChangedError) when the training set is not the one of the checkpoint, unless --allow_data_change;
    says when the number of processes differs (the data stream and the update do not depend on it). A state file
    without a fingerprint (earlier versions, the authors' runs) is not checked."""
    from core.machinery.distributed import get_world_size, is_main_process
    main = is_main_process()
    saved_ws, ws = state.get('world_size'), get_world_size()
    if saved_ws is not None and saved_ws != ws and main:
        print(f'--resume_iter: step {step} was saved by {saved_ws} process(es), this run has {ws}: the same global '
              f'batch of {args.batch_size} and the same data stream, the sums over ranks in another order '
              f'(float rounding; docs/distributed.md)')
    old = state.get('data')
    if old is None or data is None:
        return
    changes = describe_change(old, data)
    if not changes:
        return
    what = '; '.join(changes)
    if not args.allow_data_change:
        raise DataChangedError(
            f'--train_img_dir {args.train_img_dir}: the training set changed since step {step} was saved: {what}. '
            f'Resuming on it would draw other batches than the run so far did. Restore the folder, or pass '
            f'--allow_data_change to continue on the new set.')
    if main:
        print(f'--allow_data_change: the training set changed since step {step} was saved ({what}); continuing: '
              f'from step {step} on, the data order is the new set\'s')

