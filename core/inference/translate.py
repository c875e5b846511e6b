"""Translate your own images: one photo or a folder, into a domain named on the command line, with styles from
reference images or from latent codes.

    python main.py --mode translate --preset celeba_hq --checkpoint_dir expr/checkpoints/celeba_hq \
                   --resume_iter 100000 --inp me.jpg --trg_domain male --num_styles 4 --psi 0.7 --align
    python main.py --mode translate --checkpoint_dir expr/checkpoints/celeba_hq --preset celeba_hq \
                   --inp my_photos/ --trg_domain female --ref refs/female/ --align --out_dir expr/translated

    from PIL import Image
    from core.inference.translate import Translator
    translator = Translator.from_checkpoint('expr/checkpoints/celeba_hq/100000_nets_ema.ckpt', preset='celeba_hq')
    male = translator(Image.open('me.jpg'), 'male', psi=0.7)[0]    # one PIL image per style

The command writes, under --out_dir, one PNG per input and style at the input's path relative to --inp
(`<stem>_<domain>_z<k>.png` for latent styles, `<stem>_<domain>_ref_<reference stem>.png` for references) and
`contact_sheet.jpg` (every input down the first column, its translations beside it; references along the top row).
Inputs of any size are resized to --img_size squares, as the reference's loaders do; greyscale, RGBA (composited on
white), 16-bit and EXIF-rotated files are handled; an unreadable file, or a face the aligner cannot place, is named
and skipped, and the exit code is then 1.

The network's settings (img_size, widths, number of domains, high-pass path, --skip variant) are read from the
checkpoint file itself, so the released files need no flags. The file is a *_nets_ema.ckpt or the
*_nets_ema.safetensors of --mode export (core/inference/export.py). Domain names come from --domains, else from the file (a
.safetensors holds them), else from args.json beside the checkpoint (training stores the data's folder names there;
older runs: its training folders or preset), else from --preset (celeba_hq: female,male; afhq: cat,dog,wild; demo:
square,triangle); an index (0, 1, ...) always works.
"""
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from munch import Munch
from PIL import Image, ImageOps
from tqdm import tqdm

from core.checkpoint import load_into, skip_variant
from core.config import PRESET_DOMAINS, parse_args
from core.data_loader import PHOTO_EXTENSIONS, DataError
from core.files.ckpt_settings import infer_settings, read_nets_file
from core.machinery.safe_load import file_metadata
from core.model import build_model, masks_of
from core.utils import average_style, denormalize

SHEET_ROWS = 32      # rows per contact sheet (JPEG cannot be taller than 65,535 pixels)
SHEET_STYLES = 32    # style columns shown on a contact sheet (the files hold them all)
SHEET_TILE = 256     # largest tile of the contact sheet, in pixels
SETTINGS_KEYS = ('img_size', 'num_domains', 'latent_dim', 'hidden_dim', 'style_dim', 'base_dim', 'max_conv_dim')


def settings_of(args):
    """The settings a network was built with, as recorded in exported files (safetensors and ONNX metadata)."""
    return {k: args[k] for k in SETTINGS_KEYS + ('w_hpf', 'skip')}


class TranslateError(DataError):
    """Bad --mode translate input (a missing --inp, an unknown --trg_domain): reported by main.py as one line."""


# ------------------------------------------------------------------------------------------------------ image input

def find_images(path, flag='--inp'):
    """[(file, path relative to `path`)]: the file itself, or every image under a folder (recursive, sorted,
    hidden files and folders left out)."""
    if os.path.isfile(path):
        return [(path, os.path.basename(path))]
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{flag}: no such file or folder: {path}')
    root = Path(path)
    found = sorted(str(p.relative_to(root)) for p in root.rglob('*')
                   if p.suffix.lower() in PHOTO_EXTENSIONS and p.is_file()
                   and not any(part.startswith('.') for part in p.relative_to(root).parts))
    if not found:
        raise TranslateError(f'{flag}: no images under {path} (looked for {", ".join(PHOTO_EXTENSIONS)})')
    return [(os.path.join(path, rel), rel) for rel in found]


def open_rgb(fname):
    """An RGB PIL image, upright (EXIF orientation applied), transparency composited on white, 16-bit scaled."""
    with Image.open(fname) as img:
        img = ImageOps.exif_transpose(img)
        img.load()
    if img.mode in ('I;16', 'I;16B', 'I;16L', 'I', 'F'):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith('I;16') or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / top * 255 + 0.5, 0, 255).astype(np.uint8), 'L')
    if img.mode in ('RGBA', 'LA', 'PA') or (img.mode == 'P' and 'transparency' in img.info):
        rgba = img.convert('RGBA')
        canvas = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(canvas, rgba)
    return img.convert('RGB')


def _reason(e):
    return f'{type(e).__name__}: {e}'


# ------------------------------------------------------------------------------------------------------ checkpoints

def resolve_checkpoint(checkpoint, step=None):
    """The network file to use: checkpoint itself when it is a file, else {step:06d}_nets_ema.ckpt in that folder
    (or, without it, the .safetensors of --mode export; step None, 0 or -1: the latest one there)."""
    if os.path.isfile(checkpoint):
        return checkpoint
    if not os.path.isdir(checkpoint):
        raise FileNotFoundError(f'--checkpoint_dir: no such file or folder: {checkpoint}')
    files = {}
    for f in sorted(os.listdir(checkpoint), reverse=True):  # .ckpt after .safetensors: the .ckpt wins a step
        if re.fullmatch(r'\d{6}_nets_ema\.(ckpt|safetensors)', f):
            files[int(f[:6])] = os.path.join(checkpoint, f)
    steps = sorted(files)
    if step is not None and step > 0:
        if step not in files:
            raise FileNotFoundError(f'--resume_iter {step}: {os.path.join(checkpoint, f"{step:06d}_nets_ema.ckpt")} '
                                    f'not found; steps in {checkpoint}: {", ".join(map(str, steps)) or "none"}')
        return files[step]
    if not steps:
        raise FileNotFoundError(f'--checkpoint_dir: no *_nets_ema.ckpt in {checkpoint} (the released networks: '
                                f'`bash scripts/download.sh pretrained-network-celeba-hq`)')
    return files[steps[-1]]


def with_file_settings(args, state):
    """args with the architecture flags replaced by those the network file was built with (the --skip variant too:
    it is recorded in the generator's state)."""
    s = infer_settings(state)
    args = Munch(args, **{k: s[k] for k in SETTINGS_KEYS}, skip=skip_variant(state['generator']))
    # w_hpf's value is in the file's hpf.filter, which the released CelebA-HQ file lacks (it used 1)
    args.w_hpf = (s.w_hpf or (args.w_hpf if args.w_hpf > 0 else 1)) if s.hpf else 0
    return args


def domain_names(args, fname):
    """(names, where they came from) for the network in fname: --domains; the file's own (a .safetensors of
    --mode export keeps them); args.json beside it (its domains, else the folders of its train_img_dir, else its
    preset's); --preset; else the indices."""
    saved = os.path.join(os.path.dirname(os.path.abspath(fname)), 'args.json')
    run = {}
    if os.path.isfile(saved):
        with open(saved) as f:
            run = json.load(f)
    train_dir = run.get('train_img_dir') or ''
    folders = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d))
                     and not d.startswith('.')) if os.path.isdir(train_dir) else []
    candidates = ((args.domains, '--domains'), (file_metadata(fname).get('domains'), fname),
                  (run.get('domains'), saved),
                  (folders if len(folders) == args.num_domains else None, f'the folders of {train_dir}'),
                  (PRESET_DOMAINS.get(run.get('preset')), f'{saved} (preset {run.get("preset")})'),
                  (PRESET_DOMAINS.get(args.preset), f'--preset {args.preset}'))
    for value, source in candidates:
        if value:
            names = value.split(',') if isinstance(value, str) else list(value)
            names = [n.strip() for n in names]
            if len(names) != args.num_domains:
                raise TranslateError(f'{source} names {len(names)} domains ({", ".join(names)}) but the network in '
                                     f'{fname} has {args.num_domains}; give --domains with {args.num_domains} names')
            return names, source
    return [str(i) for i in range(args.num_domains)], 'indices (no --domains, args.json or --preset)'


def domain_index(trg, names, source=''):
    """The index of trg (a name, case-insensitive, or an index) among names; an error listing them otherwise."""
    listing = f'{", ".join(names)} (or an index 0-{len(names) - 1})'
    if trg is None or str(trg) == '':
        raise TranslateError(f'--trg_domain is required: one of {listing}')
    trg = str(trg)
    if trg in names:
        return names.index(trg)
    lower = [n.lower() for n in names]
    if trg.lower() in lower:
        return lower.index(trg.lower())
    if trg.isdigit() and int(trg) < len(names):
        return int(trg)
    raise TranslateError(f'--trg_domain "{trg}" is not a domain of this network; its domains: {listing}'
                         + (f' (names from {source})' if source else ''))


# ------------------------------------------------------------------------------------------------------ the API

class Translator:
    """G, F, E (EMA weights) of one checkpoint, ready to translate images by domain name."""

    def __init__(self, state, args, domains, device='cpu', fname='checkpoint'):
        """state: the file's name -> state_dict; args: flags with the file's settings (with_file_settings); fname:
        the file's name, for errors."""
        self.args = args
        self.domains = list(domains)
        self.device = torch.device(device)
        self.fname = fname
        _, nets_ema = build_model(args)
        for name in ('generator', 'mapping_network', 'style_encoder'):
            load_into(nets_ema[name], state[name], name, fname)
        self.nets = Munch({k: v.to(self.device).eval() for k, v in nets_ema.items()})
        self._aligner = None
        self._s_avg = {}  # (domain, seed) -> the domain's mean style: 10,000 codes through F, once per seed

    @classmethod
    def from_checkpoint(cls, checkpoint, step=None, args=None, device='cpu', preset=None, **flags):
        """checkpoint: a *_nets_ema.ckpt (or *_nets.ckpt, or the *_nets_ema.safetensors of --mode export) file, or a
        folder (with step, else the latest).
        args: the command line's flags (default: the parser's, with preset's); flags: any flag, e.g. domains=
        'cat,dog', wing_path=... (needed by w_hpf > 0 networks and by align), lm_path=..."""
        if args is None:
            args = parse_args(['--mode', 'translate'] + (['--preset', preset] if preset else []))
        args = Munch(args, **flags)
        fname = resolve_checkpoint(checkpoint, step)
        state = read_nets_file(fname, flag='--checkpoint_dir', trust_pickle=args.trust_pickle)
        args = with_file_settings(args, state)
        names, _ = domain_names(args, fname)
        return cls(state, args, names, device, fname)

    def domain_index(self, trg):
        return domain_index(trg, self.domains)

    # styles ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def latent_styles(self, y, num_styles=1, psi=1.0, seed=777):
        """(num_styles, style_dim): F(z, y) for z from seed, pulled toward the domain's mean style by psi."""
        g = torch.Generator().manual_seed(seed)
        # one code at a time: style k is the same whatever num_styles (torch.randn draws larger tensors differently)
        z = torch.stack([torch.randn(self.args.latent_dim, generator=g) for _ in range(num_styles)]).to(self.device)
        s = self.nets.mapping_network(z, torch.full((num_styles,), y, dtype=torch.long, device=self.device))
        if psi != 1:
            # the latent grids' truncation (core/utils.py): the mean over 10,000 codes, from seed + 1
            # read once into a local: another thread (a server's) may clear the cache between a check and a read
            s_avg = self._s_avg.get((y, seed))
            if s_avg is None:
                s_avg = average_style(self.nets, y, self.args.latent_dim,
                                      generator=torch.Generator().manual_seed(seed + 1))
                if len(self._s_avg) >= 64:  # the studio's seeds come from its users: a bounded cache
                    self._s_avg.clear()
                self._s_avg[y, seed] = s_avg
            s = torch.lerp(s_avg, s, psi)
        return s

    @torch.no_grad()
    def reference_styles(self, x_ref, y, batch_size=8):
        """(R, style_dim): E(x_ref, y), x_ref (R, 3, S, S) in [-1, 1]."""
        out = []
        for x in x_ref.split(batch_size):
            x = x.to(self.device)
            out.append(self.nets.style_encoder(x, torch.full((x.size(0),), y, dtype=torch.long, device=self.device)))
        return torch.cat(out)

    # images ------------------------------------------------------------------------------------------------------
    @property
    def aligner(self):
        if self._aligner is None:
            from core.wing import FaceAligner
            self._aligner = FaceAligner(self.args.wing_path, self.args.lm_path, self.args.img_size, self.device,
                                        trust_pickle=self.args.trust_pickle)
        return self._aligner

    def prepare(self, image, align=False):
        """A PIL image or a path -> (3, S, S) in [-1, 1]; aligned first with align (ValueError if it cannot be)."""
        if not isinstance(image, Image.Image):
            image = open_rgb(image)
        image = image.convert('RGB')
        if align:
            image = self.aligner.align_pil(image)
        return square_tensor(image, self.args.img_size)

    def to_batch(self, images, align=False):
        if torch.is_tensor(images):
            x = images if images.dim() == 4 else images[None]
            if x.shape[-2:] != (self.args.img_size,) * 2:
                x = F.interpolate(x, size=self.args.img_size, mode='bilinear', antialias=True)
            return x.float()
        return torch.stack([self.prepare(im, align) for im in images])

    @torch.no_grad()
    def translate(self, x, s_trg):
        """x (N, 3, S, S), s_trg (K, style_dim) -> (N, K, 3, S, S) in [-1, 1]: every image with every style."""
        x = x.to(self.device)
        masks = masks_of(self.nets, x)  # once per batch: the masks depend on the source only
        N = x.size(0)
        out = [self.nets.generator(x, s[None].expand(N, -1), masks=masks) for s in s_trg]
        return torch.stack(out, dim=1).clamp_(-1, 1)

    def styles(self, y, ref=None, num_styles=1, psi=1.0, seed=777, align=False):
        if ref is None:
            return self.latent_styles(y, num_styles, psi, seed)
        if isinstance(ref, (str, os.PathLike)) and os.path.isdir(ref):
            ref = [f for f, _ in find_images(ref, 'ref')]
        if isinstance(ref, (str, os.PathLike, Image.Image)) or (torch.is_tensor(ref) and ref.dim() == 3):
            ref = [ref]
        return self.reference_styles(self.to_batch(ref, align), y)

    def __call__(self, images, trg, ref=None, psi=1.0, num_styles=1, seed=777, align=False):
        """images: a PIL image, a path, a (3, H, W) or (N, 3, H, W) tensor in [-1, 1], or a list of images/paths;
        trg: a domain name or index; ref: reference image(s) (PIL, path, folder, tensor) or None for num_styles
        latent styles truncated by psi. Returns, for one image, a list of PIL images (one per style); for several,
        a list of such lists."""
        single = isinstance(images, (Image.Image, str, os.PathLike)) or (torch.is_tensor(images) and images.dim() == 3)
        y = self.domain_index(trg)
        s_trg = self.styles(y, ref, num_styles, psi, seed, align)
        x = self.to_batch([images] if single and not torch.is_tensor(images) else images, align)
        out = [[to_pil(t) for t in row] for row in self.translate(x, s_trg).cpu()]
        return out[0] if single else out


def square_tensor(image, img_size):
    """An RGB PIL image -> (3, img_size, img_size) in [-1, 1], as the reference's test loader makes it (Resize of the
    PIL image, antialiased bilinear; non-square images are squashed)."""
    return TF.to_tensor(TF.resize(image, [img_size, img_size], antialias=True)) * 2 - 1


def to_pil(x):
    """(3, H, W) in [-1, 1] -> PIL image, rounded as torchvision's save_image does."""
    a = denormalize(x.detach().float().cpu()).mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8)
    return Image.fromarray(a.numpy())


# ------------------------------------------------------------------------------------------------------ the CLI

class ContactSheets:
    """Inputs down the first column, their translations beside them, references along the top row (when given);
    a new sheet every SHEET_ROWS rows: contact_sheet.jpg, contact_sheet_2.jpg, ..."""

    def __init__(self, out_dir, tile, ref_tiles=None):
        self.out_dir, self.tile, self.ref_tiles = out_dir, tile, ref_tiles
        self.rows, self.written = [], []

    def _thumb(self, img):
        return img if img.size == (self.tile, self.tile) else img.resize((self.tile, self.tile), Image.BICUBIC)

    def add(self, inp, outs):
        self.rows.append([self._thumb(inp)] + [self._thumb(o) for o in outs[:SHEET_STYLES]])
        if len(self.rows) == SHEET_ROWS:
            self.flush()

    def flush(self):
        if not self.rows:
            return
        rows = list(self.rows)
        if self.ref_tiles is not None:
            white = Image.new('RGB', (self.tile, self.tile), 'white')
            rows.insert(0, [white] + [self._thumb(r) for r in self.ref_tiles[:SHEET_STYLES]])
        t, cols = self.tile, max(len(r) for r in rows)
        sheet = Image.new('RGB', (cols * t, len(rows) * t), 'white')
        for i, row in enumerate(rows):
            for j, img in enumerate(row):
                sheet.paste(img, (j * t, i * t))
        n = len(self.written) + 1
        fname = os.path.join(self.out_dir, 'contact_sheet.jpg' if n == 1 else f'contact_sheet_{n}.jpg')
        sheet.save(fname, quality=95, subsampling=0)  # 4:4:4, no colour blur
        self.written.append(fname)
        self.rows = []


def _load_all(translator, items, align, failed):
    """[(tensor (3, S, S), PIL of what was translated, item)] for the items that load (and align); the others are
    appended to failed as (file, reason)."""
    out = []
    for fname, rel in items:
        try:
            x = translator.prepare(open_rgb(fname), align=align)
        except RuntimeError:  # torch (out of memory, a device error): not a problem of this file
            raise
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error...; the aligner ValueError
            failed.append((fname, _reason(e)))
            continue
        out.append((x, to_pil(x), (fname, rel)))
    return out


def _output_stems(items):
    """rel path -> output path stem (without extension): the input's stem, or its full name where two inputs of
    one folder share a stem (a.jpg and a.png)."""
    seen = {}
    for _, rel in items:
        key = os.path.splitext(rel)[0]
        seen[key] = seen.get(key, 0) + 1
    return {rel: os.path.splitext(rel)[0] if seen[os.path.splitext(rel)[0]] == 1 else rel.replace('.', '_')
            for _, rel in items}


def translate_cli(args, device):
    """--mode translate. Returns the exit code: 0, or 1 when some input or reference was skipped."""
    if not args.inp:
        raise TranslateError('--inp is required: an image or a folder of images')
    if args.num_styles < 1:
        raise TranslateError(f'--num_styles must be at least 1 (got {args.num_styles})')
    fname = resolve_checkpoint(args.checkpoint_dir, args.resume_iter)
    state = read_nets_file(fname, flag='--checkpoint_dir', trust_pickle=args.trust_pickle)
    args = with_file_settings(args, state)
    names, source = domain_names(args, fname)
    y = domain_index(args.trg_domain, names, source)  # an unknown name stops here, before any work
    items = find_images(args.inp, '--inp')
    print(f'Translating {len(items)} image(s) from {args.inp} into "{names[y]}" with {fname} '
          f'(img_size {args.img_size}, {args.num_domains} domains: {", ".join(names)}; w_hpf {args.w_hpf:g}) '
          f'on {device}')
    translator = Translator(state, args, names, device, fname)
    failed, failed_refs = [], []

    ref_imgs = None
    if args.ref and (args.num_styles != 1 or args.psi != 1):
        print('--ref given: one style per reference; --num_styles and --psi are not used')
    if args.ref:
        refs = _load_all(translator, find_images(args.ref, '--ref'), args.align, failed_refs)
        if not refs:
            raise TranslateError(f'--ref: no usable reference image in {args.ref}: '
                                 + '; '.join(f'{f} ({r})' for f, r in failed_refs))
        s_trg = translator.reference_styles(torch.stack([x for x, _, _ in refs]), y, args.batch_size)
        stems = [os.path.splitext(os.path.basename(f))[0] for _, _, (f, _) in refs]
        tags = [f'ref_{s}' for s in stems] if len(set(stems)) == len(stems) else [f'ref{k}' for k in range(len(refs))]
        ref_imgs = [p for _, p, _ in refs]
    else:
        s_trg = translator.latent_styles(y, args.num_styles, args.psi, args.seed)
        tags = [f'z{k}' for k in range(args.num_styles)]

    os.makedirs(args.out_dir, exist_ok=True)
    sheets = ContactSheets(args.out_dir, min(args.img_size, SHEET_TILE), ref_imgs)
    stems = _output_stems(items)
    written = 0
    progress = tqdm(total=len(items), desc=f'translate -> {names[y]}', unit='img', dynamic_ncols=True)
    for start in range(0, len(items), args.batch_size):
        chunk = items[start:start + args.batch_size]
        loaded = _load_all(translator, chunk, args.align, failed)
        if loaded:
            outs = translator.translate(torch.stack([x for x, _, _ in loaded]), s_trg).cpu()
            for (_, inp_pil, (_, rel)), row in zip(loaded, outs):
                pils = [to_pil(t) for t in row]
                for tag, img in zip(tags, pils):
                    path = os.path.join(args.out_dir, f'{stems[rel]}_{names[y]}_{tag}.png')
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    img.save(path)
                    written += 1
                sheets.add(inp_pil, pils)
        progress.update(len(chunk))
    progress.close()
    sheets.flush()
    print(f'Wrote {written} image(s) for {len(items) - len(failed)} input(s) to {args.out_dir}; contact sheet(s): '
          f'{", ".join(sheets.written) or "none"}')
    failed += failed_refs
    if failed:
        print(f'Skipped {len(failed)} file(s):\n' + '\n'.join(f'  {f}: {r}' for f, r in failed), file=sys.stderr)
        return 1
    return 0
