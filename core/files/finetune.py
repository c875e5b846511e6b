"""Fine-tuning: training that starts from a network file instead of random weights.

    python main.py --mode train --init_from expr/checkpoints/celeba_hq/100000_nets_ema.ckpt \
                   --train_img_dir data/mine/train --val_img_dir data/mine/val --num_domains 3 \
                   --checkpoint_dir expr/mine --total_iters 20000

    lines = init_from(nets, nets_ema, args)   # Solver.train calls it at step 0 when --init_from is given

The file is a `*_nets_ema.ckpt` (the authors' release holds only these: the moving averages of G, F and E) or a
`*_nets.ckpt` (G, F, E and D). G, F, E and their EMA copies all start from the file's G, F, E; D starts from the
file's D when it has one, else from its He initialisation. The optimisers are fresh and training starts at step 0
(lambda_ds decays from its initial value again). Resuming a fine-tuning run is an ordinary resume: --init_from only
acts when training starts at step 0.

With --num_domains different from the file's, every shared layer loads and the per-domain parts (F's unshared
heads, E's unshared linear layers, the rows of D's last convolution) keep the file's values for the domains both
have (domain k here = the file's domain k, by sorted folder name) and their initialisation for the new ones.
Settings that change any other shape (--img_size, --w_hpf, the widths) cannot be loaded: an error names them.
"""
import re

from core.checkpoint import skip_variant
from core.files.ckpt_settings import NetsFileError, check_settings, infer_settings, read_nets_file
from core.machinery.distributed import is_main_process

# the per-domain parts: a head per domain in F and E (key prefix unshared.<domain>.)
_HEAD = re.compile(r'unshared\.(\d+)\.')


def _d_output_keys(state):
    """The keys of D's last convolution (main.<last>.weight/bias): one output row per domain."""
    last = max(int(k.split('.')[1]) for k in state if k.startswith('main.'))
    return {f'main.{last}.weight', f'main.{last}.bias'}


def merge_state(name, own, src, num_src_domains):
    """own (the freshly initialised state_dict) with the file's values put in. Returns (state, loaded, partial,
    fresh, unused): lists of keys loaded whole, loaded for the shared domains only (D's output rows), left at their
    initialisation, and in the file but not used (heads of domains this run does not have)."""
    state, loaded, partial, fresh = dict(own), [], [], []
    d_out = _d_output_keys(own) if name == 'discriminator' else set()
    for k, v in own.items():
        head = _HEAD.match(k)
        if k in d_out and k in src:
            m = min(v.shape[0], src[k].shape[0])
            t = v.clone()
            t[:m] = src[k][:m].to(v.dtype)
            state[k] = t
            (loaded if src[k].shape == v.shape else partial).append(k)
        elif k in src and tuple(src[k].shape) == tuple(v.shape):
            state[k] = src[k].to(v.dtype)
            loaded.append(k)
        elif k not in src and head and int(head.group(1)) >= num_src_domains:
            fresh.append(k)
        elif k == 'hpf.filter' and k not in src:  # the released generator predates it: rebuilt from --w_hpf
            fresh.append(k)
        else:
            why = 'missing' if k not in src else f'file {tuple(src[k].shape)} vs model {tuple(v.shape)}'
            raise NetsFileError(f'--init_from: "{name}.{k}" cannot be loaded ({why}); check --img_size, --w_hpf, '
                                f'--base_dim, --max_conv_dim, --hidden_dim, --style_dim, --latent_dim.')
    unused = []
    for k in src:
        if k in own:
            continue
        head = _HEAD.match(k)
        if not head:
            raise NetsFileError(f'--init_from: the file\'s "{name}.{k}" has no place in the network built from the '
                                f'flags; check --img_size and --w_hpf.')
        unused.append(k)
    return state, loaded, partial, fresh, unused


def _domains_of(keys):
    return sorted({int(_HEAD.match(k).group(1)) for k in keys if _HEAD.match(k)})


def read_init_file(args, fname=None):
    """(name -> state_dict, settings) of args.init_from (or fname), checked against the flags: NetsFileError naming
    the file and the flags when it cannot be used. main.py calls it before the run writes anything."""
    fname = fname or args.init_from
    src = read_nets_file(fname, trust_pickle=args.trust_pickle)
    s = infer_settings(src)
    check_settings(s, args, fname)
    skip = skip_variant(src['generator']) if 'generator' in src else args.skip
    if skip != args.skip:
        raise NetsFileError(f'--init_from: {fname} holds a --skip {skip} generator and this run builds --skip '
                            f'{args.skip}; give --skip {skip}')
    return src, s


def init_from(nets, nets_ema, args, fname=None):
    """Loads args.init_from (or fname) into nets and nets_ema in place (the optimisers keep their parameters);
    returns the start-up report, printed on the main process."""
    fname = fname or args.init_from
    src, s = read_init_file(args, fname)
    names = (args.domains or '').split(',') if args.domains else [str(i) for i in range(args.num_domains)]
    kind = 'G, F, E and D' if s.has_discriminator else 'G, F, E (moving averages; no discriminator)'
    lines = [f'--init_from {fname}: {kind}, {s.num_domains} domains; this run has {args.num_domains} '
             f'({", ".join(names)}).']
    for name in ('generator', 'mapping_network', 'style_encoder', 'discriminator'):
        net = nets[name]
        if name not in src:
            lines.append(f'  {name}: initialised (He), the file has none')
            continue
        state, loaded, partial, fresh, unused = merge_state(name, net.state_dict(), src[name], s.num_domains)
        net.load_state_dict(state)
        if name in nets_ema:
            nets_ema[name].load_state_dict(state)
        line = f'  {name}: {len(loaded)} tensors loaded'
        if partial and args.num_domains > s.num_domains:
            line += f'; output rows of domain(s) {", ".join(names[s.num_domains:])} initialised (He)'
        elif partial:
            dropped_rows = ', '.join(map(str, range(args.num_domains, s.num_domains)))
            line += f'; the file\'s output rows of domain(s) {dropped_rows} not used'
        new = _domains_of(fresh)
        if new:
            line += f'; heads of domain(s) {", ".join(names[i] for i in new)} initialised (He)'
        if 'hpf.filter' in fresh:
            line += f'; hpf.filter rebuilt from --w_hpf {args.w_hpf:g} (not in the file)'
        dropped = _domains_of(unused)
        if dropped:
            line += f'; the file\'s heads of domain(s) {", ".join(map(str, dropped))} not used'
        lines.append(line)
    lines.append('  EMA copies of G, F, E: the same values; optimisers: fresh; training starts at step 0')
    if is_main_process():
        print('\n'.join(lines))
    return lines

