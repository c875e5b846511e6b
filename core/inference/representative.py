"""The authors' representative images (assets/representative/..., from the reference repository), which the defaults
of --src_dir, --ref_dir, --inp_dir and --out_dir name: a fresh clone does not have them (third-party images, not
committed), so a mode that needs them stops with one message saying what to get and how.

    check_representative(args)   # in main.py before sample/align: DataError naming the flag and the download command
"""
import os

from core.data_loader import DataError

ROOT = 'assets/representative'
HOW = ('Get the authors\' representative images with `bash scripts/download.sh representative-images` (into '
       'assets/representative, from github.com/clovaai/stargan-v2; CC BY-NC 4.0, never committed here), or point '
       '{flags} at folders of your own (<folder>/<domain>/*.jpg).')

# the folders each mode reads (the output folder of align is written, not read)
READS = {'sample': ('src_dir', 'ref_dir'), 'align': ('inp_dir',)}


def check_representative(args):
    """Raises one DataError when a folder this mode reads lies under assets/representative and is missing."""
    missing = [(k, args[k]) for k in READS.get(args.mode, ())
               if os.path.normpath(args[k]).startswith(os.path.normpath(ROOT)) and not os.path.isdir(args[k])]
    if missing:
        flags = '/'.join('--' + k for k, _ in missing)
        raise DataError(f'{", ".join(f"--{k} {d}" for k, d in missing)}: not found. ' + HOW.format(flags=flags))
