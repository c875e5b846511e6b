"""What a resumed run must share with the run it continues: the training set and (said, not required) the number
of processes.

    data = fingerprint(loader, root)             # of the source loader's files: per domain, names and sizes
    check_resume(state, data, args, step)        # DataChangedError naming what changed, unless --allow_data_change

The data stream is a function of the sorted file list (core/data_loader.py), so a folder that gained or lost images
since the run started gives other batches from the resumed step on: a different run, without a word, before this.
The state file of every step records, per domain, the count, the total size, a sha256 of the sorted
`relative path<TAB>size` lines and those lines themselves (zlib, for the message's examples: ~150 KB for CelebA-HQ),
and a digest of each file's bytes: sha256 of its first and last PART bytes (the whole file up to 2 * PART), 8 bytes
a file in the listing's order, and a sha256 over them. Modification times are not used: a set copied to another disk
or machine (as clusters copy data to local disks at each job) has new ones and the same bytes, and resumes. A file
rewritten at the same size is noticed where its first or last PART bytes changed, which covers an image re-encoded
or edited anywhere: a compressed image's bytes change from the edit to the end of the file, and PNG and JPEG streams
end with a checksum or the last coded data. The cost: docs/benchmarks.md (30,000 files).
"""
import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from core.data_loader import DataError


class DataChangedError(DataError):
    """The training set differs from the one the checkpoint was trained on."""


PART = 64 * 1024  # bytes read at each end of a file for its digest
DIGEST = 8        # bytes of each file's digest kept in the state file


def file_digest(fname, part=PART):
    """sha256 of the file's first and last `part` bytes (of the whole file when it is at most 2 * part), DIGEST
    bytes of it."""
    h = hashlib.sha256()
    with open(fname, 'rb') as f:
        if os.fstat(f.fileno()).st_size <= 2 * part:
            h.update(f.read())
        else:
            h.update(f.read(part))
            f.seek(-part, os.SEEK_END)
            h.update(f.read(part))
    return h.digest()[:DIGEST]


def fingerprint(loader, root, threads=8):
    """{domain: {count, bytes, sha256, listing, content_sha256, digests}} of a training loader's files (the files
    it draws from, after --skip_bad_images), by path relative to root; None for a loader without files (the tests'
    fakes). The files are read in threads (the reads wait on the disk, not on Python)."""
    dataset, domains = getattr(loader, 'dataset', None), getattr(loader, 'domains', None)
    if dataset is None or domains is None:
        return None
    files = {d: [] for d in domains}
    for fname, label in zip(dataset.samples, dataset.targets):
        files[domains[label]].append(fname)
    out = {}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for domain, fnames in files.items():
            entries = sorted((os.path.relpath(f, root), f) for f in fnames)
            lines = [f'{rel}\t{os.path.getsize(f)}' for rel, f in entries]
            text = '\n'.join(lines).encode()
            digests = b''.join(pool.map(file_digest, [f for _, f in entries], chunksize=64))
            out[domain] = dict(count=len(lines), bytes=sum(int(line.rsplit('\t', 1)[1]) for line in lines),
                               sha256=hashlib.sha256(text).hexdigest(),
                               listing=torch.frombuffer(bytearray(zlib.compress(text, 6)), dtype=torch.uint8),
                               content_sha256=hashlib.sha256(digests).hexdigest(),
                               digests=torch.from_numpy(np.frombuffer(digests, dtype=np.uint8).copy()))
    return out


def _lines(entry):
    text = zlib.decompress(entry['listing'].numpy().tobytes()).decode() if 'listing' in entry else ''
    return dict(line.rsplit('\t', 1) for line in text.split('\n') if line)


def _digests(entry):
    """{relative path: digest} of a fingerprint's entry ({} for one without digests: earlier versions)."""
    if 'digests' not in entry or 'listing' not in entry:
        return {}
    text = zlib.decompress(entry['listing'].numpy().tobytes()).decode()
    names = [line.rsplit('\t', 1)[0] for line in text.split('\n') if line]
    raw = entry['digests'].numpy().tobytes()
    return {n: raw[k * DIGEST:(k + 1) * DIGEST] for k, n in enumerate(names)}


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
        same_bytes = a.get('content_sha256') is None or a.get('content_sha256') == b.get('content_sha256')
        if a['sha256'] == b['sha256'] and same_bytes:
            continue
        la, lb = _lines(a), _lines(b)
        added, removed = set(lb) - set(la), set(la) - set(lb)
        resized = [n for n in set(la) & set(lb) if la[n] != lb[n]]
        da, db = _digests(a), _digests(b)
        rewritten = [n for n in set(da) & set(db) if da[n] != db[n] and la.get(n) == lb.get(n)]
        parts = []
        if added:
            parts.append(f'{len(added)} added ({_examples(added)})')
        if removed:
            parts.append(f'{len(removed)} removed ({_examples(removed)})')
        if resized:
            parts.append(f'{len(resized)} of another size ({_examples(resized)})')
        if rewritten:
            parts.append(f'{len(rewritten)} rewritten at the same size ({_examples(rewritten)})')
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

