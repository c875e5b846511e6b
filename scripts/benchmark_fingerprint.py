"""The cost of the training set's fingerprint (core/machinery/run_identity.py), computed at every start of a training
run: a tree of --files files of --size bytes in two domains, under a temporary folder, fingerprinted with the
digests of the files' bytes and with names and sizes only (what it recorded before the digests).

    python scripts/benchmark_fingerprint.py --files 30000 --size 2000
    python scripts/benchmark_fingerprint.py --files 30000 --size 30000 --keep /tmp/fp_tree   # CelebA-HQ-like JPEGs

The files are read warm (the page cache holds them after writing): a first start on a cold network disk reads
them from the disk, which the median below does not show.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--files', type=int, default=30000)
    p.add_argument('--size', type=int, default=2000, help='bytes per file')
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--keep', default=None, help='write the tree here and keep it (default: a temporary folder)')
    a = p.parse_args()

    from munch import Munch
    from core.machinery import run_identity

    root = a.keep or tempfile.mkdtemp(prefix='fingerprint_')
    files, labels = [], []
    t0 = time.perf_counter()
    for k in range(a.files):
        domain = ('female', 'male')[k % 2]
        path = os.path.join(root, domain, f'{k:06d}.jpg')
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as f:
                f.write(os.urandom(a.size))
        files.append(path)
        labels.append(k % 2)
    print(f'{a.files} files of {a.size} bytes in {root} ({time.perf_counter() - t0:.1f} s to write)')
    loader = Munch(dataset=Munch(samples=files, targets=labels), domains=['female', 'male'])

    def timed(fn):
        times = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    real = run_identity.file_digest
    try:
        with_digests = timed(lambda: run_identity.fingerprint(loader, root))
        run_identity.file_digest = lambda fname: bytes(run_identity.DIGEST)  # names and sizes only: no file read
        names_sizes = timed(lambda: run_identity.fingerprint(loader, root))
    finally:
        run_identity.file_digest = real
        if not a.keep:
            shutil.rmtree(root)
    print('| files | bytes each | names and sizes, s | with the digests, s | digests in the state file, bytes |')
    print(f'| {a.files} | {a.size} | {names_sizes:.2f} | {with_digests:.2f} | {a.files * run_identity.DIGEST} |')

if __name__ == '__main__':
    main()
