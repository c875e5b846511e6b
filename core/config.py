"""The command line: every flag of the reference CLI (same names, same defaults) plus ours, and presets.

    args = parse_args(['--mode', 'train', '--preset', 'demo'])   # a Munch; flows from main.py down unchanged

A preset (and the mode) set the parser's defaults before the command line is parsed: a flag given on the command
line, in any form argparse accepts, always wins. Every default lives here, once; the code below main.py reads plain
`args.x`.
"""
import argparse
import json
import os
import sys

from munch import Munch

PRESETS = {
    # the paper's settings (SPEC section 3)
    'celeba_hq': dict(img_size=256, num_domains=2, w_hpf=1, lambda_reg=1, lambda_sty=1, lambda_ds=1, lambda_cyc=1,
                      train_img_dir='data/celeba_hq/train', val_img_dir='data/celeba_hq/val'),
    'afhq': dict(img_size=256, num_domains=3, w_hpf=0, lambda_reg=1, lambda_sty=1, lambda_ds=2, lambda_cyc=1,
                 train_img_dir='data/afhq/train', val_img_dir='data/afhq/val',
                 src_dir='assets/representative/afhq/src', ref_dir='assets/representative/afhq/ref',
                 studio_inputs='assets/representative/afhq/src', studio_refs='assets/representative/afhq/ref'),
    # the quickstart: a synthetic two-domain set drawn on first use (core/demo/data.py: squares and triangles at
    # random places and sizes, in 8 colours on a light background; --demo_task picks another task of the family) at
    # 32 px, narrow networks (16-64 channels), minutes on one CPU thread: batch 4 (twice the iterations of batch 8 in
    # the same time), a high learning rate, F's a tenth of it (the paper's 1/100 leaves F at its initialisation in a
    # short run), R1 0.1 (the paper's 1 kept D too smooth to tell a blob from the target's shape), half the paper's
    # cycle weight (at 1 the cycle term kept the source's shape: the family's bars and triangles turned late or not
    # at all), the diversity weight 3 falling to 0 over the run (the paper's schedule, compressed: ds_iter = the run),
    # every learning rate falling to 0 over the second half (the colours settle), a short EMA, no random crops (they
    # would move and scale the content the score checks). The first N iterations of any longer or shorter run are
    # the quickstart's own (the schedules count steps): give --ds_iter and --lr_decay_from with --total_iters.
    # docs/demo.md: what it reaches, how fast, the sweep (scripts/demo_sweep.py) and what else was tried
    'demo': dict(img_size=32, num_domains=2, w_hpf=0, base_dim=16, max_conv_dim=64, hidden_dim=64, lambda_ds=3,
                 ds_iter=1500, lambda_cyc=0.5, lambda_reg=0.1, lr=1e-3, f_lr=1e-4, lr_decay_from=750, ema_beta=0.98,
                 randcrop_prob=0, num_threads=1, batch_size=4, val_batch_size=8, total_iters=1500, print_every=20,
                 sample_every=250, save_every=750, eval_every=0, num_workers=0, num_outs_per_domain=4,
                 train_img_dir='expr/demo_data/train', val_img_dir='expr/demo_data/val',
                 src_dir='expr/demo_data/src', ref_dir='expr/demo_data/ref',
                 studio_inputs='expr/demo_data/val', studio_refs='expr/demo_data/val',
                 sample_dir='expr/demo/samples', checkpoint_dir='expr/demo/checkpoints',
                 eval_dir='expr/demo/eval', result_dir='expr/demo/results'),
}

# what the demo's two domains can differ in (core/demo/data.TASKS draws them; named here, where the flag is)
DEMO_TASKS = ('shapes', 'bars', 'updown')
DEMO_COLOURS = ('light', 'palette')

# the domain names of each preset's data (sorted folder names), for --mode translate's --trg_domain
PRESET_DOMAINS = {'celeba_hq': 'female,male', 'afhq': 'cat,dog,wild', 'demo': 'square,triangle'}

# a mode's own defaults for flags shared with other modes (applied like a preset, before it)
MODE_DEFAULTS = {'translate': dict(out_dir='expr/translated')}

SAMPLE_OUTPUTS = ('reference', 'latent', 'video_ref', 'video_latent')  # what --mode sample can write


def _sample_outputs(text):
    names = [s.strip() for s in text.split(',') if s.strip()]
    unknown = [n for n in names if n not in SAMPLE_OUTPUTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f'{text!r}: choose from {",".join(SAMPLE_OUTPUTS)} (comma-separated)')
    return ','.join(names)


def _micro_batch(text):
    if text == 'auto':
        return text
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f'{text!r}: a number of images (0: the whole batch) or auto')
    return n


def get_parser():
    p = argparse.ArgumentParser(description='StarGAN v2: train, sample, evaluate, align faces, translate, export, serve a page.',
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # model arguments
    p.add_argument('--img_size', type=int, default=256, help='Image resolution')
    p.add_argument('--num_domains', type=int, default=2, help='Number of domains')
    p.add_argument('--latent_dim', type=int, default=16, help='Latent vector dimension')
    p.add_argument('--hidden_dim', type=int, default=512, help='Hidden dimension of mapping network')
    p.add_argument('--style_dim', type=int, default=64, help='Style code dimension')
    p.add_argument('--base_dim', type=int, default=0,
                   help='Channels of the first conv of G, E, D (0: 2**14 // img_size, the reference width)')
    p.add_argument('--max_conv_dim', type=int, default=512, help='Channel cap of G, E, D')

    # weight for objective functions
    p.add_argument('--lambda_reg', type=float, default=1, help='Weight for R1 regularization')
    p.add_argument('--lambda_cyc', type=float, default=1, help='Weight for cyclic consistency loss')
    p.add_argument('--lambda_sty', type=float, default=1, help='Weight for style reconstruction loss')
    p.add_argument('--lambda_ds', type=float, default=1, help='Weight for diversity sensitive loss')
    p.add_argument('--ds_iter', type=int, default=100000, help='Number of iterations to optimize diversity sensitive loss')
    p.add_argument('--w_hpf', type=float, default=1, help='weight for high-pass filtering')
    p.add_argument('--skip', type=str, default='hpf', choices=['hpf', 'unet', 'none'],
                   help='Encoder-to-decoder skips of G: hpf (the reference: FAN-masked high-pass skips when w_hpf > 0), '
                        'unet (a learned 1x1 conv of the encoder features at every resolution), none (no skip)')
    p.add_argument('--hpf_masks', type=str, default='fan', choices=['fan', 'ones'],
                   help='Masks of the high-pass skips (--skip hpf, w_hpf > 0): fan (the reference: FAN face heatmaps '
                        'from --wing_path), ones (unmasked, for data without faces)')

    # training arguments
    p.add_argument('--randcrop_prob', type=float, default=0.5, help='Probabilty of using random-resized cropping')
    p.add_argument('--total_iters', type=int, default=100000, help='Number of total iterations')
    p.add_argument('--resume_iter', type=int, default=0, help='Iterations to resume training/testing')
    p.add_argument('--batch_size', type=int, default=8,
                   help='Global batch size (split across processes under torchrun)')
    p.add_argument('--val_batch_size', type=int, default=32, help='Batch size for validation')
    p.add_argument('--lr', type=float, default=1e-4, help='Learning rate for D, E and G')
    p.add_argument('--f_lr', type=float, default=1e-6, help='Learning rate for F')
    p.add_argument('--d_lr', type=float, default=0,
                   help='Learning rate for D (0: --lr, as the reference); for the balance of D against G')
    p.add_argument('--e_lr', type=float, default=0, help='Learning rate for E (0: --lr, as the reference)')
    p.add_argument('--lr_decay_from', type=int, default=0,
                   help='From this iteration on, every learning rate (G, F, E, D) falls linearly to 0 at '
                        '--total_iters, as CycleGAN\'s second half (0: constant rates, the reference\'s)')
    p.add_argument('--beta1', type=float, default=0.0, help='Decay rate for 1st moment of Adam')
    p.add_argument('--beta2', type=float, default=0.99, help='Decay rate for 2nd moment of Adam')
    p.add_argument('--weight_decay', type=float, default=1e-4, help='Weight decay for optimizer')
    p.add_argument('--micro_batch', type=_micro_batch, default=0,
                   help='Images per chunk of each process\'s batch in the training step (gradients accumulated over '
                        'the chunks, one optimiser step per network: the update of the whole batch, to float rounding, '
                        'in less memory; docs/memory.md). 0: the whole batch; auto: the most that fits the free GPU '
                        'memory (the whole batch on a CPU)')
    p.add_argument('--ema_beta', type=float, default=0.999,
                   help='Decay of the moving average of G, F, E (the reference: 0.999; the demo uses less for its short run)')
    p.add_argument('--num_outs_per_domain', type=int, default=10, help='Number of generated images per domain during sampling')

    # misc
    p.add_argument('--mode', type=str, required=True, choices=['train', 'sample', 'eval', 'align', 'translate', 'export', 'serve'],
                   help='This argument is used in solver')
    p.add_argument('--num_workers', type=int, default=4, help='Number of workers used in DataLoader')
    p.add_argument('--seed', type=int, default=777, help='Seed for random number generator')
    p.add_argument('--preset', type=str, default=None, choices=sorted(PRESETS),
                   help='Fill in the flags of a setting: celeba_hq / afhq (the paper), demo (synthetic data, CPU, minutes)')
    p.add_argument('--demo_task', type=str, default='shapes', choices=DEMO_TASKS,
                   help='With --preset demo: what the synthetic domains differ in (core/demo/data.py, docs/demo.md): '
                        'shapes (square/triangle), bars (horizontal/vertical), updown (a triangle pointing down/up); '
                        'the data is drawn into expr/demo_data (shapes) or expr/demo_data_<task>')
    p.add_argument('--demo_colours', type=str, default='light', choices=DEMO_COLOURS,
                   help='With --preset demo: the styles of the synthetic data (core/demo/data.py, docs/demo.md): '
                        'light (8 shape colours on a light background), palette (the same on 3 backgrounds: light, '
                        'grey, dark)')
    p.add_argument('--device', type=str, default='auto', help='auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...')
    p.add_argument('--num_threads', type=int, default=0,
                   help='CPU threads of PyTorch (torch.set_num_threads; 0: PyTorch\'s default, one per core). The demo '
                        'uses 1: its convolutions are too small to share, and the result then does not depend on the '
                        'machine\'s core count')

    # directory for training
    p.add_argument('--train_img_dir', type=str, default='data/celeba_hq/train', help='Directory containing training images')
    p.add_argument('--val_img_dir', type=str, default='data/celeba_hq/val', help='Directory containing validation images')
    p.add_argument('--sample_dir', type=str, default='expr/samples', help='Directory for saving generated images')
    p.add_argument('--checkpoint_dir', type=str, default='expr/checkpoints', help='Directory for saving network checkpoints')
    p.add_argument('--skip_bad_images', action='store_true',
                   help='Drop unreadable or truncated images (with a warning listing them) instead of stopping')

    # directory for calculating metrics
    p.add_argument('--eval_dir', type=str, default='expr/eval', help='Directory for saving metrics, i.e., FID and LPIPS')
    p.add_argument('--no_save_eval_images', action='store_true',
                   help='Do not write the generated evaluation PNGs (the metrics are the same)')
    p.add_argument('--inception_weights', type=str, default=None,
                   help='Inception-v3 weights file (default: torchvision cache under TORCH_HOME)')
    p.add_argument('--lpips_alexnet_weights', type=str, default=None,
                   help='AlexNet weights file for LPIPS (default: torchvision cache under TORCH_HOME)')
    p.add_argument('--eval_landmarks', action='store_true',
                   help='Also measure the FAN landmark displacement (source vs translation) when w_hpf is 0 '
                        '(with w_hpf > 0 it is measured whenever --wing_path exists)')
    p.add_argument('--fid_cache_dir', type=str, default='expr/fid_cache',
                   help='Where the real-image Inception statistics are cached')

    # directory for testing
    p.add_argument('--result_dir', type=str, default='expr/results', help='Directory for saving generated images and videos')
    p.add_argument('--src_dir', type=str, default='assets/representative/celeba_hq/src', help='Directory containing input source images')
    p.add_argument('--ref_dir', type=str, default='assets/representative/celeba_hq/ref', help='Directory containing input reference images')
    p.add_argument('--inp_dir', type=str, default='assets/representative/custom/female', help='input directory when aligning faces')
    p.add_argument('--out_dir', type=str, default='assets/representative/celeba_hq/src/female', help='output directory when aligning faces')
    p.add_argument('--outputs', type=_sample_outputs, default=','.join(SAMPLE_OUTPUTS),
                   help='What --mode sample writes, comma-separated: reference, latent (the psi grids), video_ref, '
                        'video_latent')

    # translating one's own images (--mode translate, core/inference/translate.py) and fine-tuning (core/files/finetune.py)
    p.add_argument('--inp', type=str, default=None,
                   help='--mode translate: an image, or a folder searched recursively (outputs keep the relative path)')
    p.add_argument('--trg_domain', type=str, default=None,
                   help='--mode translate: the target domain, by name (see --domains) or index')
    p.add_argument('--ref', type=str, default=None,
                   help='--mode translate: a reference image or a folder of them (one output per reference); '
                        'without it, styles come from --num_styles latent codes')
    p.add_argument('--num_styles', type=int, default=1, help='--mode translate: latent styles per image')
    p.add_argument('--psi', type=float, default=1.0,
                   help='--mode translate: truncation of latent styles toward the domain mean (1: none, 0: the mean)')
    p.add_argument('--align', action='store_true',
                   help='--mode translate: align faces as CelebA-HQ is before translating (--wing_path, --lm_path)')
    p.add_argument('--domains', type=str, default=None,
                   help='Comma-separated domain names (default: the training folder names, stored in args.json; '
                        'else the preset\'s)')
    p.add_argument('--init_from', type=str, default=None,
                   help='--mode train: start G, F, E (and D if present) and their EMA copies from this '
                        '*_nets_ema.ckpt or *_nets.ckpt (fine-tuning; fresh optimisers at step 0)')

    # exporting a network file (--mode export, core/inference/export.py; docs/deploy.md)
    p.add_argument('--to', type=str, default='safetensors', choices=['safetensors', 'onnx'],
                   help='--mode export: safetensors (G, F, E as *_nets_ema.safetensors: tensors only, read wherever '
                        'a *_nets_ema.ckpt is) or onnx (graphs of the mapping network, style encoder and generator, '
                        'the FAN masks inside the generator when w_hpf > 0)')
    p.add_argument('--export_dir', type=str, default=None,
                   help='--mode export: where to write (default: beside the network file)')

    # the style studio, a local web page over the translator (--mode serve, core/inference/studio.py; docs/studio.md)
    p.add_argument('--host', type=str, default='127.0.0.1',
                   help='--mode serve: the address to listen on (127.0.0.1: this machine only; 0.0.0.0 opens the page '
                        'to the network, behind a login: --studio_password_file or $STUDIO_PASSWORD)')
    p.add_argument('--studio_user', type=str, default='studio',
                   help='--mode serve: the login\'s user name, when --host is beyond this machine')
    p.add_argument('--studio_password_file', type=str, default=None,
                   help='--mode serve: a file whose first line is the login\'s password (else $STUDIO_PASSWORD); '
                        'required when --host is beyond this machine. Never given on the command line itself')
    p.add_argument('--open_to_network_without_login', action='store_true',
                   help='--mode serve: let a --host beyond this machine serve anyone who can reach it, without a '
                        'login')
    p.add_argument('--studio_queue', type=int, default=64,
                   help='--mode serve: requests that may wait at once (one network: they are served one at a time); '
                        'one more is answered "Queue is full"')
    p.add_argument('--port', type=int, default=7860, help='--mode serve: the port (0: any free one)')
    p.add_argument('--studio_inputs', type=str, default='assets/representative/celeba_hq/src',
                   help='--mode serve: a folder of sample inputs shown on the page (searched recursively)')
    p.add_argument('--studio_refs', type=str, default='assets/representative/celeba_hq/ref',
                   help='--mode serve: the reference gallery, one folder per domain (<folder>/<domain>/*.jpg)')
    p.add_argument('--max_upload_mb', type=float, default=20,
                   help='--mode serve: the largest upload, in megabytes')
    p.add_argument('--max_upload_pixels', type=float, default=40e6,
                   help='--mode serve: the largest upload, in pixels (width x height)')

    # faults a long run meets (core/machinery/integrity.py, core/machinery/run_identity.py; docs/outputs.md)
    p.add_argument('--allow_data_change', action='store_true',
                   help='Resume although the training set (file names and sizes per domain) differs from the one '
                        'the checkpoint recorded; the data order from then on is the new set\'s. Without it such a '
                        'resume stops with a message saying what changed')

    # network files (core/machinery/safe_load.py)
    p.add_argument('--trust_pickle', action='store_true',
                   help='Load network, state and wing.ckpt files that need full unpickling (weights_only=False): such '
                        'a file can run any code when loaded; only for files from a source you trust. Without it, '
                        'they stop with a message naming the file and what it would unpickle')

    # face alignment
    p.add_argument('--wing_path', type=str, default='expr/checkpoints/wing.ckpt')
    p.add_argument('--lm_path', type=str, default='expr/checkpoints/celeba_lm_mean.npz')

    # Weights & Biases (core/machinery/wandb_log.py; docs/outputs.md): optional, the wandb package
    p.add_argument('--wandb', type=str, default=None, metavar='PROJECT',
                   help='--mode train: also record the run in this Weights & Biases project (the loss terms, the '
                        'sample grids, the settings; a resume continues the same wandb run; WANDB_MODE=offline '
                        'records locally)')
    p.add_argument('--wandb_entity', type=str, default=None, help='--wandb: the team or user (default: yours)')
    p.add_argument('--wandb_name', type=str, default=None, help='--wandb: the run\'s name (default: wandb\'s)')

    # step size
    p.add_argument('--print_every', type=int, default=10)
    p.add_argument('--sample_every', type=int, default=5000)
    p.add_argument('--save_every', type=int, default=10000)
    p.add_argument('--eval_every', type=int, default=50000, help='0 disables evaluation during training')

    # speed (see docs/benchmarks.md); the defaults compute what the reference computes
    p.add_argument('--compile', action='store_true',
                   help='torch.compile G, F, E, D (with its R1 penalty) and the FAN: the same computation, its float '
                        'rounding reordered by kernel fusion')
    p.add_argument('--compile_mode', type=str, default='default',
                   choices=['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'],
                   help='torch.compile mode with --compile (reduce-overhead: CUDA graphs)')
    p.add_argument('--compile_backend', type=str, default='inductor',
                   help='torch.compile backend with --compile (aot_eager: capture without code generation, to debug)')
    p.add_argument('--amp', type=str, default='none', choices=['none', 'bf16'],
                   help='Autocast mixed precision (changes numerics; opt-in)')
    p.add_argument('--memory_format', type=str, default='contiguous', choices=['contiguous', 'channels_last'],
                   help='Memory layout of the networks\' conv weights and the images in training: contiguous (NCHW, '
                        'the reference\'s) or channels_last (NHWC, oneDNN\'s own on the CPU: no reorder around each '
                        'convolution). The same computation, its float rounding reordered')
    p.add_argument('--optim_impl', type=str, default='auto', choices=['auto', 'loop', 'foreach', 'fused'],
                   help='Implementation of Adam: auto (PyTorch\'s choice, as the reference: a loop over the '
                        'parameters on the CPU, foreach on CUDA), loop, foreach (one call per operation over all '
                        'parameters), fused (one kernel). The same update to float rounding')
    return p


def _pre_parse(argv):
    """The flags that choose other flags' defaults (--preset, --mode), read before the full parse. add_help=False and
    parse_known_args: everything else is left to the full parser (abbreviations included)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument('--preset', choices=sorted(PRESETS))
    pre.add_argument('--mode')
    known, _ = pre.parse_known_args(argv)
    return known


def parse_args(argv=None):
    """Every flag as a Munch. Two stages: --preset (and --mode) first, whose values become the parser's defaults, then
    the command line, so a flag given in any form argparse accepts (--batch 4, --batch_size=4) wins over the preset."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = get_parser()
    known = _pre_parse(argv)
    if known.mode in MODE_DEFAULTS:
        parser.set_defaults(**MODE_DEFAULTS[known.mode])
    if known.preset:
        parser.set_defaults(**PRESETS[known.preset])
    args = Munch(vars(parser.parse_args(argv)))
    if known.preset == 'demo' and args.demo_task != DEMO_TASKS[0]:
        # each task's data in a folder of its own (the preset's folders left at their defaults follow the task)
        for k, v in PRESETS['demo'].items():
            if isinstance(v, str) and v.startswith('expr/demo_data/') and args[k] == v:
                args[k] = v.replace('expr/demo_data/', f'expr/demo_data_{args.demo_task}/')
    return args


def defaults():
    """Every flag's default (no preset), as a Munch: the one home of the defaults."""
    args = Munch(vars(get_parser().parse_args(['--mode', 'train'])))  # --mode is the one required flag
    args.mode = None
    return args


def complete_args(args):
    """args (a Munch, a dict or an argparse.Namespace, e.g. from the reference's own parser) with every flag this
    project knows filled in from the defaults: for the public entry points (build_model, calculate_metrics) that
    downstream code calls with its own configuration. Code below them reads plain args.x."""
    if not isinstance(args, dict):
        args = vars(args)
    missing = {k: v for k, v in defaults().items() if k not in args}
    if not missing:
        return args if isinstance(args, Munch) else Munch(args)
    return Munch(missing, **args)


def save_config(args, fname):
    """args.json: the full configuration, beside the checkpoints."""
    os.makedirs(os.path.dirname(fname) or '.', exist_ok=True)
    with open(fname, 'w') as f:
        json.dump(dict(args), f, indent=2, sort_keys=True, default=str)


def load_config(fname):
    """The Munch written by save_config."""
    with open(fname) as f:
        return Munch(json.load(f))


def summary(args, device):
    """The short start-up line: mode, preset, device, data and output folders (the full configuration is args.json)."""
    parts = [f'mode {args.mode}', f'preset {args.preset or "none"}', f'device {device}']
    if args.mode == 'train':
        parts += [f'data {args.train_img_dir} (val {args.val_img_dir})', f'checkpoints {args.checkpoint_dir}',
                  f'samples {args.sample_dir}', f'{args.img_size} px, batch {args.batch_size}, '
                  f'{args.total_iters} iterations']
    elif args.mode == 'sample':
        parts += [f'checkpoints {args.checkpoint_dir}', f'src {args.src_dir}', f'ref {args.ref_dir}',
                  f'results {args.result_dir}']
    elif args.mode == 'eval':
        parts += [f'checkpoints {args.checkpoint_dir}', f'val {args.val_img_dir}', f'eval {args.eval_dir}']
    elif args.mode == 'align':
        parts += [f'input {args.inp_dir}', f'output {args.out_dir}']
    elif args.mode == 'export':
        parts += [f'checkpoints {args.checkpoint_dir}', f'to {args.to}', f'output {args.export_dir or "beside it"}']
    elif args.mode == 'serve':
        parts += [f'checkpoints {args.checkpoint_dir}', f'inputs {args.studio_inputs}',
                  f'references {args.studio_refs}']
    elif args.mode == 'translate':
        parts += [f'checkpoints {args.checkpoint_dir}', f'input {args.inp}', f'target {args.trg_domain}',
                  f'output {args.out_dir}']
    return 'StarGAN v2: ' + '; '.join(parts)
