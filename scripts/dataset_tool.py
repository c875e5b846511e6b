"""Your own images as a training set, in one command (the convention of stylegan2-ada's and EDM2's dataset_tool.py).

    # SRC/<domain>/... (any depth below each domain folder)
    python scripts/dataset_tool.py --source my_photos --dest data/mine
    # a folder of images (any depth) and a CSV of file,domain (paths relative to SRC; an optional header line)
    python scripts/dataset_tool.py --source my_photos --labels labels.csv --dest data/mine --size 256
    # CelebA's attribute file: two domains named after the attribute (smiling, not_smiling)
    python scripts/dataset_tool.py --source img_align_celeba --labels list_attr_celeba.txt --attribute Smiling \\
        --dest data/smiling --val 500 --size 256 --align

writes DEST/train/<domain>/ and DEST/val/<domain>/ (what --train_img_dir and --val_img_dir read), holding out --val
images per domain drawn with --seed, and DEST/dataset_tool.json (the settings, the counts, every skipped file and
why). Each file keeps its path below its domain folder (or below SRC with --labels). Without --size or --align the
files are copied byte for byte; formats the training loader does not read (.bmp, .webp, .tif, .gif) are written as
PNG. --size centre-crops to a square and resizes (Lanczos); --align aligns faces as CelebA-HQ's are (core/wing.py's
FaceAligner, needs wing.ckpt) into --size squares (256 without it). Re-encoded JPEGs are written at quality 95,
everything else as PNG.

Unreadable or truncated files, exact duplicates (the same bytes: the first in path order is kept), labels naming no
file and faces the aligner cannot place are named and skipped. The source is never written to; DEST is written under
a temporary name beside it and renamed when complete, and a non-empty DEST is refused unless --overwrite.
"""
import argparse
import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from core.data_loader import IMG_EXTENSIONS, PHOTO_EXTENSIONS, decode_error, listdir  # noqa: E402

ADVISED = 1000  # training images per domain below which a warning is printed
ADVICE = ('the authors advise more than 10,000 training images (clovaai/stargan-v2#42); fine-tuning the released '
          'networks with --init_from starts from what they learned (docs/own_data.md)')


class DatasetError(ValueError):
    """A problem that stops the tool before it writes anything: the message names the file or flag."""


def parse_args(argv=None):
    from core.config import defaults
    d = defaults()
    p = argparse.ArgumentParser(description='Your own images as a training set: DEST/train/<domain>/, DEST/val/<domain>/.',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--source', required=True, help='A folder with one sub-folder per domain, or (with --labels) a '
                                                   'folder of images at any depth')
    p.add_argument('--dest', required=True, help='The folder to write (refused when not empty, unless --overwrite)')
    p.add_argument('--labels', default=None, help='Each file\'s domain: a CSV of file,domain (paths relative to '
                                                  '--source), or CelebA\'s list_attr_celeba.txt with --attribute')
    p.add_argument('--attribute', default=None, help='With CelebA\'s attribute file: the attribute (e.g. Smiling) '
                                                     'that makes the two domains (smiling, not_smiling)')
    p.add_argument('--val', type=int, default=100, help='Images held out per domain for validation')
    p.add_argument('--size', type=int, default=None, help='Centre-crop to a square and resize to this many pixels '
                                                          '(default: files copied unchanged)')
    p.add_argument('--align', action='store_true', help='Align faces as CelebA-HQ\'s are first (--wing_path, '
                                                        '--lm_path)')
    p.add_argument('--seed', type=int, default=777, help='Seed of the validation draw')
    p.add_argument('--overwrite', action='store_true', help='Replace a non-empty --dest')
    p.add_argument('--wing_path', default=d.wing_path, help='--align: the FAN weights')
    p.add_argument('--lm_path', default=d.lm_path, help='--align: the mean CelebA-HQ landmarks')
    p.add_argument('--device', default='auto', help='--align: auto, cpu, cuda, cuda:1, ...')
    p.add_argument('--trust_pickle', action='store_true', help='--align: load a wing.ckpt that needs full unpickling')
    p.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1),
                   help='Threads that read, check and write the images')
    args = p.parse_args(argv)
    if args.val < 0:
        p.error('--val: a number of images per domain, 0 or more')
    if args.size is not None and args.size < 8:
        p.error('--size: a side in pixels, 8 or more')
    if args.attribute and not args.labels:
        p.error('--attribute needs --labels (CelebA\'s list_attr_celeba.txt)')
    return args


# ---------------------------------------------------------------------------------------------------------------------
# which file belongs to which domain

def check_domain_name(name, where):
    if not name or name in ('.', '..') or name.startswith('.') or '/' in name or '\\' in name:
        raise DatasetError(f'{where}: "{name}" cannot be a domain folder name (empty, hidden or with a slash)')
    return name


def relative_images(root):
    """Image files under root at any depth (the formats --mode translate reads), relative to root, sorted."""
    return sorted(os.path.relpath(f, root) for f in listdir(root, PHOTO_EXTENSIONS))


def labels_from_folders(src):
    """[(relpath, domain)] from SRC/<domain>/...; images directly in SRC are reported, not used."""
    domains = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)) and not d.startswith('.'))
    if not domains:
        raise DatasetError(f'--source: {src} has no domain sub-folders; put each domain\'s images in SRC/<domain>/, '
                           f'or name each file\'s domain with --labels')
    loose = [f for f in os.listdir(src) if f.lower().endswith(PHOTO_EXTENSIONS)
             and os.path.isfile(os.path.join(src, f))]
    if loose:
        print(f'note: {len(loose)} image(s) directly in {src} (not in a domain folder) are not used, e.g. {loose[0]}')
    found = {d: relative_images(os.path.join(src, d)) for d in domains}
    for d in (d for d in domains if not found[d]):
        print(f'note: {os.path.join(src, d)} has no images (looked for {", ".join(PHOTO_EXTENSIONS)}): not a domain')
    return [(os.path.join(d, rel), d) for d in domains for rel in found[d]]


def is_celeba_attributes(fname):
    with open(fname, errors='replace') as f:
        first = f.readline().strip()
    return first.isdigit()


def read_csv_labels(fname):
    """[(name, domain, where)] from a CSV of file,domain; a first line 'file,domain' is a header."""
    out = []
    with open(fname, newline='', encoding='utf-8-sig') as f:
        for i, row in enumerate(csv.reader(f), 1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise DatasetError(f'--labels: {fname} line {i}: expected 2 fields (file,domain), got {len(row)}')
            name, domain = row[0].strip(), row[1].strip()
            if i == 1 and (name.lower(), domain.lower()) == ('file', 'domain'):
                continue
            out.append((name, check_domain_name(domain, f'--labels: {fname} line {i}'), f'{fname} line {i}'))
    if not out:
        raise DatasetError(f'--labels: {fname} names no file')
    return out


def read_celeba_attributes(fname, attribute):
    """[(name, domain, where)] from CelebA's list_attr_celeba.txt: the image count, the 40 attribute names, then
    per image its file name and 40 values of 1 or -1. The domains: the attribute's name and not_<name>, lower case."""
    with open(fname) as f:
        lines = f.read().splitlines()
    if len(lines) < 2:
        raise DatasetError(f'--labels: {fname}: expected the image count, the attribute names, then one line per image')
    names = lines[1].split()
    if not attribute:
        raise DatasetError(f'--labels: {fname} is CelebA\'s attribute file: choose the attribute with --attribute '
                           f'(one of {", ".join(names)})')
    lower = [n.lower() for n in names]
    if attribute.lower() not in lower:
        raise DatasetError(f'--attribute {attribute}: not in {fname} (one of {", ".join(names)})')
    col = lower.index(attribute.lower())
    yes = check_domain_name(attribute.lower(), '--attribute')
    no = 'not_' + yes
    out = []
    for i, line in enumerate(lines[2:], 3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1 or parts[col + 1] not in ('1', '-1'):
            raise DatasetError(f'--labels: {fname} line {i}: expected a file name and {len(names)} values of 1 or -1')
        out.append((parts[0], yes if parts[col + 1] == '1' else no, f'{fname} line {i}'))
    count = lines[0].strip()
    if count.isdigit() and int(count) != len(out):
        print(f'note: {fname} says {count} images and lists {len(out)}')
    return out


def match_labels(src, entries, skipped):
    """[(relpath, domain)] for label entries [(name, domain, where)]: a name is a path relative to SRC, or a file
    name found once anywhere under SRC (CelebA's file names have no folder). What cannot be matched goes to skipped."""
    files = relative_images(src)
    exact = set(files)
    by_base = {}
    for f in files:
        by_base.setdefault(os.path.basename(f), []).append(f)
    chosen, where_of = {}, {}
    for name, domain, where in entries:
        rel = os.path.normpath(name)
        if os.path.isabs(name) or rel.startswith('..'):
            skipped.append((name, f'outside --source ({where})'))
            continue
        if rel not in exact:
            candidates = by_base.get(rel, []) if os.sep not in rel else []
            if len(candidates) != 1:
                skipped.append((os.path.join(src, rel), (f'{len(candidates)} files of that name under --source'
                                                         if candidates else 'no such image') + f' ({where})'))
                continue
            rel = candidates[0]
        if rel in chosen and chosen[rel] != domain:
            skipped.append((os.path.join(src, rel), f'two domains: {chosen[rel]} ({where_of[rel]}) and {domain} '
                                                    f'({where})'))
            chosen[rel] = None
            continue
        if rel not in chosen:
            chosen[rel], where_of[rel] = domain, where
    unlabelled = len(exact) - len(chosen)
    if unlabelled:
        print(f'note: {unlabelled} image(s) under {src} have no label and are not used')
    return sorted((rel, d) for rel, d in chosen.items() if d is not None)


# ---------------------------------------------------------------------------------------------------------------------
# checking, splitting, writing

def inspect(path):
    """(sha256 of the bytes, None) or (None, why it cannot be read)."""
    try:
        with open(path, 'rb') as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    except OSError as e:
        return None, f'{type(e).__name__}: {e}'
    bad = decode_error(path)
    return (None, bad[len(path) + 2:-1]) if bad else (digest, None)


def check_files(src, labelled, workers, skipped):
    """The readable, unique files of labelled [(relpath, domain)], in order; the others go to skipped."""
    paths = [os.path.join(src, rel) for rel, _ in labelled]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(tqdm(pool.map(inspect, paths), total=len(paths), desc='check', leave=False))
    kept, first = [], {}
    for (rel, domain), path, (digest, why) in zip(labelled, paths, results):
        if why:
            skipped.append((path, f'unreadable: {why}'))
        elif digest in first:
            other_rel, other_domain = first[digest]
            also = '' if other_domain == domain else f', domain {other_domain}'
            skipped.append((path, f'duplicate of {os.path.join(src, other_rel)} (the same bytes{also})'))
        else:
            first[digest] = (rel, domain)
            kept.append((rel, domain))
    return kept


def split(kept, val, seed):
    """{domain: (train, val)} of relpaths, val drawn per domain from (seed, the domain's name): a domain's split does
    not depend on the other domains."""
    by_domain = {}
    for rel, domain in kept:
        by_domain.setdefault(domain, []).append(rel)
    out = {}
    for domain in sorted(by_domain):
        files = sorted(by_domain[domain])
        if len(files) <= val:
            raise DatasetError(f'--val {val}: domain "{domain}" has {len(files)} usable image(s); it needs more than '
                               f'--val (lower --val)')
        rng = np.random.default_rng([seed, zlib.crc32(domain.encode())])
        held = set(rng.choice(len(files), size=val, replace=False).tolist()) if val else set()
        out[domain] = ([f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held])
    return out


def square(img, size):
    """Centre crop to a square, then a Lanczos resize to size."""
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def pad_square(img):
    """Mirror-padded to a square: the aligner resizes its input to a square, and a padded face keeps its proportions."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    dh, dw = max(0, w - h), max(0, h - w)
    a = np.pad(a, ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2), (0, 0)), mode='symmetric')
    return Image.fromarray(a)


class Writer:
    """Writes one file: a byte copy, or the decoded image (aligned, squared) re-encoded."""

    def __init__(self, args):
        self.size, self.aligner = args.size, None
        if args.align:
            from core.machinery.distributed import resolve_device
            from core.wing import FaceAligner
            self.aligner = FaceAligner(args.wing_path, args.lm_path, args.size or 256, resolve_device(args.device),
                                       trust_pickle=args.trust_pickle)
        self.reencode = args.align or args.size is not None

    def out_name(self, rel):
        stem, ext = os.path.splitext(rel)
        if not self.reencode and ext.lower() in IMG_EXTENSIONS:
            return rel
        return stem + ('.jpg' if ext.lower() in ('.jpg', '.jpeg') else '.png')

    def write(self, src_path, dst_path):
        """None, or why the file could not be written."""
        os.makedirs(os.path.dirname(dst_path), exist_ok=True)
        if not self.reencode and os.path.splitext(src_path)[1].lower() in IMG_EXTENSIONS:
            shutil.copyfile(src_path, dst_path)
            return None
        from core.inference.translate import open_rgb  # EXIF orientation, transparency, 16-bit: as translate reads
        try:
            img = open_rgb(src_path)
        except Exception as e:  # PIL raises many kinds for files it decoded once and cannot convert
            return f'unreadable: {type(e).__name__}: {e}'
        if self.aligner is not None:
            try:
                img = self.aligner.align_pil(pad_square(img))
            except ValueError as e:
                return f'cannot align: {e}'
        elif self.size:
            img = square(img, self.size)
        if dst_path.endswith('.jpg'):
            img.save(dst_path, quality=95)
        else:
            img.save(dst_path)
        return None


def is_within(a, b):
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def prepare(args):
    """The whole tool; returns the report written to DEST/dataset_tool.json."""
    src, dest = args.source, args.dest
    if not os.path.isdir(src):
        raise DatasetError(f'--source: folder not found: {src}')
    if is_within(dest, src) or is_within(src, dest):
        raise DatasetError(f'--dest {dest} and --source {src} overlap: the source is never written to')
    if os.path.exists(dest) and (not os.path.isdir(dest) or os.listdir(dest)) and not args.overwrite:
        raise DatasetError(f'--dest: {dest} exists and is not empty; choose another folder or pass --overwrite')
    if args.labels and not os.path.isfile(args.labels):
        raise DatasetError(f'--labels: file not found: {args.labels}')

    skipped = []
    if args.labels:
        celeba = is_celeba_attributes(args.labels)
        if args.attribute and not celeba:
            raise DatasetError(f'--attribute: {args.labels} is not CelebA\'s attribute file (its first line is not '
                               f'the image count)')
        entries = read_celeba_attributes(args.labels, args.attribute) if celeba else read_csv_labels(args.labels)
        labelled = match_labels(src, entries, skipped)
    else:
        labelled = labels_from_folders(src)
    if not labelled:
        raise DatasetError(f'--source: no images found under {src} (looked for {", ".join(PHOTO_EXTENSIONS)})')
    kept = check_files(src, labelled, args.workers, skipped)
    splits = split(kept, args.val, args.seed)
    writer = Writer(args)  # before writing: a missing wing.ckpt stops here

    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(dest)) + '.', suffix='.tmp', dir=parent)
    try:
        jobs = []
        for domain, (train, val) in splits.items():
            base = '' if args.labels else domain
            for part, rels in (('train', train), ('val', val)):
                for rel in rels:
                    out_rel = writer.out_name(rel[len(base) + 1:] if base else rel)
                    jobs.append((domain, part, os.path.join(src, rel), os.path.join(tmp, part, domain, out_rel)))
        taken = set()
        for i, job in enumerate(jobs):  # two sources that become one output name (a.webp and a.png as PNG): a suffix
            dst = job[3]
            while dst in taken:
                dst = os.path.splitext(dst)[0] + '_' + os.path.splitext(job[2])[1][1:] + os.path.splitext(dst)[1]
            taken.add(dst)
            jobs[i] = job[:3] + (dst,)
        workers = 1 if writer.aligner is not None else max(1, args.workers)  # the FAN uses the threads itself
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(lambda j: writer.write(j[2], j[3]), jobs), total=len(jobs), desc='write',
                                leave=False))
        counts = {d: {'train': 0, 'val': 0} for d in splits}
        for (domain, part, src_path, dst), why in zip(jobs, results):
            if why:
                skipped.append((src_path, why))
            else:
                counts[domain][part] += 1
        for part in ('train', 'val'):
            for domain in splits:
                os.makedirs(os.path.join(tmp, part, domain), exist_ok=True)
        report = dict(source=os.path.abspath(src), labels=args.labels, attribute=args.attribute, val=args.val,
                      size=args.size, align=args.align, seed=args.seed, domains=counts,
                      skipped=[dict(file=f, why=w) for f, w in skipped])
        with open(os.path.join(tmp, 'dataset_tool.json'), 'w') as f:
            json.dump(report, f, indent=2)
        if os.path.exists(dest):
            old = tempfile.mkdtemp(prefix='.' + os.path.basename(os.path.abspath(dest)) + '.', suffix='.old',
                                   dir=parent)
            os.replace(dest, os.path.join(old, 'dest'))
            os.replace(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def print_report(report, dest):
    for f in report['skipped']:
        print(f'skipped: {f["file"]}: {f["why"]}')
    width = max(len(d) for d in report['domains'])
    print(f'{dest}: {len(report["domains"])} domain(s), {len(report["skipped"])} file(s) skipped')
    for domain, c in report['domains'].items():
        print(f'  {domain:<{width}}  train {c["train"]:>7,}  val {c["val"]:>6,}')
    for domain, c in report['domains'].items():
        if c['train'] < ADVISED:
            print(f'warning: domain "{domain}" has {c["train"]:,} training images (fewer than {ADVISED:,}); {ADVICE}')
    if len(report['domains']) < 2:
        print('warning: one domain: StarGAN v2 translates between two or more')
    n = len(report['domains'])
    print(f'train with: --train_img_dir {os.path.join(dest, "train")} --val_img_dir {os.path.join(dest, "val")} '
          f'--num_domains {n}' + (f' --img_size {report["size"] or 256}' if report['align'] or report['size'] else ''))


def main(argv=None):
    args = parse_args(argv)
    try:
        report = prepare(args)
    except (DatasetError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print_report(report, args.dest)
    return 0


if __name__ == '__main__':
    sys.exit(main())
