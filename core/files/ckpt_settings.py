"""What a network file was built with, read from the file itself: for translating and fine-tuning from files that
come without their args.json (the authors' released `100000_nets_ema.ckpt`).

    nets = read_nets_file('expr/checkpoints/celeba_hq/100000_nets_ema.ckpt')   # name -> state_dict ('fan' dropped)
    settings = infer_settings(nets)   # Munch(img_size=256, hpf=True, w_hpf=None, num_domains=2, latent_dim=16, ...)
    check_settings(settings, args, fname)  # error naming every flag that cannot fit the file

The shapes fix everything that changes the architecture: the style encoder's trunk has log2(img_size) - 2
downsampling blocks, the generator's encoder 2 more than log2(img_size) - 4, plus one with the high-pass path
(w_hpf > 0), and the widths are the weights' sizes. Only w_hpf's value is not always in the file: the released
CelebA-HQ generator has no `hpf.filter` buffer (its value is 8 / w_hpf at the centre).
"""
import os
import re

from munch import Munch

from core.checkpoint import strip_module_prefix
from core.machinery.integrity import verify_network_file
from core.machinery.safe_load import NetworkFileError, read_network_file

NETS = ('generator', 'mapping_network', 'style_encoder', 'discriminator')


class NetsFileError(NetworkFileError):
    """A network file that cannot be used with the flags given: the message names the file and the flags."""


def read_nets_file(fname, flag='--init_from', trust_pickle=False):
    """The networks of a *_nets.ckpt / *_nets_ema.ckpt / *_nets_ema.safetensors as name -> state_dict (`module.`
    prefixes and `fan` dropped). Read with weights_only=True: a file that needs full unpickling is an error unless
    trust_pickle."""
    if not os.path.isfile(fname):
        raise FileNotFoundError(f'{flag}: network file not found: {fname}')
    verify_network_file(fname, flag, trust_pickle)  # one of our runs' files: against its step's state file
    raw = read_network_file(fname, flag, trust_pickle)
    if not isinstance(raw, dict) or not {'generator', 'mapping_network', 'style_encoder'} <= set(raw):
        keys = list(map(str, raw)) if isinstance(raw, dict) else []
        have = ', '.join(keys[:8]) + (f' ... ({len(keys)} entries)' if len(keys) > 8 else '') if keys else (
            'no entries' if isinstance(raw, dict) else type(raw).__name__)
        raise NetsFileError(f'{flag}: {fname} is not a StarGAN v2 network file (a *_nets.ckpt, *_nets_ema.ckpt or '
                            f'*_nets_ema.safetensors with generator, mapping_network and style_encoder); it holds: '
                            f'{have}')
    return {k: strip_module_prefix(v) for k, v in raw.items() if k in NETS}


def _count(state, pattern):
    return len({m.group(1) for k in state for m in [re.match(pattern, k)] if m})


def infer_settings(nets):
    """The flags a network file was built with, from its tensor shapes."""
    G, F, E = nets['generator'], nets['mapping_network'], nets['style_encoder']
    n_trunk = _count(E, r'shared\.(\d+)\.conv1\.weight$')        # downsampling ResBlks: log2(img_size) - 2
    img_size = 2 ** (n_trunk + 2)
    n_encode = _count(G, r'encode\.(\d+)\.conv1\.weight$')       # log2(img_size) - 4 [+ 1 with w_hpf] + 2
    hpf = n_encode - 2 - (n_trunk - 2) == 1
    w_hpf = None
    if 'hpf.filter' in G:
        w_hpf = round(8 / float(G['hpf.filter'].reshape(-1)[4]), 6)
    heads = _count(F, r'unshared\.(\d+)\.')
    last = max(int(m.group(1)) for k in F for m in [re.match(r'unshared\.0\.(\d+)\.weight$', k)] if m)
    base_dim = G['from_rgb.weight'].shape[0]
    s = Munch(img_size=img_size, hpf=hpf, w_hpf=w_hpf, num_domains=heads,
              latent_dim=F['shared.0.weight'].shape[1], hidden_dim=F['shared.0.weight'].shape[0],
              style_dim=F[f'unshared.0.{last}.weight'].shape[0],
              base_dim=0 if base_dim == 2 ** 14 // img_size else base_dim,
              # the style encoder's last width is min(base * 2**n, max_conv_dim): the cap, or any larger cap
              max_conv_dim=E['unshared.0.weight'].shape[1],
              has_discriminator='discriminator' in nets)
    return s


def check_settings(s, args, fname, flag='--init_from', same_domains=False):
    """Raises NetsFileError naming every flag of args whose value the network file cannot be loaded with."""
    bad = []
    if args.img_size != s.img_size:
        bad.append(f'--img_size {args.img_size} (the file is {s.img_size})')
    if s.hpf and args.w_hpf <= 0:
        bad.append(f'--w_hpf {args.w_hpf:g} (the file has the high-pass path: --w_hpf {s.w_hpf or 1:g})')
    elif not s.hpf and args.w_hpf > 0:
        bad.append(f'--w_hpf {args.w_hpf:g} (the file has no high-pass path: --w_hpf 0)')
    for k in ('latent_dim', 'hidden_dim', 'style_dim'):
        if args[k] != s[k]:
            bad.append(f'--{k} {args[k]} (the file: {s[k]})')
    base = args.base_dim or 2 ** 14 // args.img_size
    if args.img_size == s.img_size and base != (s.base_dim or 2 ** 14 // s.img_size):
        bad.append(f'--base_dim {args.base_dim} (the file: {s.base_dim})')
    if _width(args.img_size, base, args.max_conv_dim) != s.max_conv_dim and args.img_size == s.img_size:
        bad.append(f'--max_conv_dim {args.max_conv_dim} (the file: {s.max_conv_dim})')
    if same_domains and args.num_domains != s.num_domains:
        bad.append(f'--num_domains {args.num_domains} (the file: {s.num_domains})')
    if bad:
        raise NetsFileError(f'{flag}: {fname} cannot be loaded with ' + '; '.join(bad) + '.')


def _width(img_size, base, max_conv_dim):
    """The style encoder's output width for these flags (SPEC section 1)."""
    dim = base
    for _ in range(img_size.bit_length() - 1 - 2):
        dim = min(dim * 2, max_conv_dim)
    return dim
