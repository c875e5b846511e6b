"""The command line: every flag of the reference CLI (same names, same defaults) plus ours, and presets.

    args = parse_args(['--mode', 'train', '--preset', 'demo'])   # a Munch; flows from main.py down unchanged

Presets fill in flags the user did not give; a flag given on the command line always wins.
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
                 src_dir='assets/representative/afhq/src', ref_dir='assets/representative/afhq/ref'),
    # the quickstart: a synthetic two-domain set drawn on first use (core/demo_data.py), narrow networks, minutes on
    # a CPU. Tuned for a run short enough to watch: a high learning rate (F's 1/100 of it, as in the paper), a short
    # EMA, no random crops (the shapes stay centred); see README, Quickstart
    'demo': dict(img_size=32, num_domains=2, w_hpf=0, base_dim=8, max_conv_dim=32, hidden_dim=64, lambda_ds=1,
                 lr=1e-3, f_lr=1e-5, ema_beta=0.98, randcrop_prob=0,
                 batch_size=8, val_batch_size=8, total_iters=1000, ds_iter=1000, print_every=20, sample_every=200,
                 save_every=500, eval_every=0, num_workers=0, num_outs_per_domain=4,
                 train_img_dir='expr/demo_data/train', val_img_dir='expr/demo_data/val',
                 src_dir='expr/demo_data/src', ref_dir='expr/demo_data/ref',
                 sample_dir='expr/demo/samples', checkpoint_dir='expr/demo/checkpoints',
                 eval_dir='expr/demo/eval', result_dir='expr/demo/results'),
}


def get_parser():
    p = argparse.ArgumentParser(description='StarGAN v2: train, sample, evaluate, align faces.',
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

    # training arguments
    p.add_argument('--randcrop_prob', type=float, default=0.5, help='Probabilty of using random-resized cropping')
    p.add_argument('--total_iters', type=int, default=100000, help='Number of total iterations')
    p.add_argument('--resume_iter', type=int, default=0, help='Iterations to resume training/testing')
    p.add_argument('--batch_size', type=int, default=8,
                   help='Global batch size (split across processes under torchrun)')
    p.add_argument('--val_batch_size', type=int, default=32, help='Batch size for validation')
    p.add_argument('--lr', type=float, default=1e-4, help='Learning rate for D, E and G')
    p.add_argument('--f_lr', type=float, default=1e-6, help='Learning rate for F')
    p.add_argument('--beta1', type=float, default=0.0, help='Decay rate for 1st moment of Adam')
    p.add_argument('--beta2', type=float, default=0.99, help='Decay rate for 2nd moment of Adam')
    p.add_argument('--weight_decay', type=float, default=1e-4, help='Weight decay for optimizer')
    p.add_argument('--ema_beta', type=float, default=0.999,
                   help='Decay of the moving average of G, F, E (the reference: 0.999; the demo uses less for its short run)')
    p.add_argument('--num_outs_per_domain', type=int, default=10, help='Number of generated images per domain during sampling')

    # misc
    p.add_argument('--mode', type=str, required=True, choices=['train', 'sample', 'eval', 'align'],
                   help='This argument is used in solver')
    p.add_argument('--num_workers', type=int, default=4, help='Number of workers used in DataLoader')
    p.add_argument('--seed', type=int, default=777, help='Seed for random number generator')
    p.add_argument('--preset', type=str, default=None, choices=sorted(PRESETS),
                   help='Fill in the flags of a setting: celeba_hq / afhq (the paper), demo (synthetic data, CPU, minutes)')
    p.add_argument('--device', type=str, default='auto', help='auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...')

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
    p.add_argument('--fid_cache_dir', type=str, default='expr/fid_cache',
                   help='Where the real-image Inception statistics are cached')

    # directory for testing
    p.add_argument('--result_dir', type=str, default='expr/results', help='Directory for saving generated images and videos')
    p.add_argument('--src_dir', type=str, default='assets/representative/celeba_hq/src', help='Directory containing input source images')
    p.add_argument('--ref_dir', type=str, default='assets/representative/celeba_hq/ref', help='Directory containing input reference images')
    p.add_argument('--inp_dir', type=str, default='assets/representative/custom/female', help='input directory when aligning faces')
    p.add_argument('--out_dir', type=str, default='assets/representative/celeba_hq/src/female', help='output directory when aligning faces')

    # face alignment
    p.add_argument('--wing_path', type=str, default='expr/checkpoints/wing.ckpt')
    p.add_argument('--lm_path', type=str, default='expr/checkpoints/celeba_lm_mean.npz')

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
    return p


def parse_args(argv=None):
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.preset:
        given = _flags_given(parser, sys.argv[1:] if argv is None else argv)
        for k, v in PRESETS[args.preset].items():
            if k not in given:
                setattr(args, k, v)
    return Munch(vars(args))


def _flags_given(parser, argv):
    dests = set()
    for tok in argv:
        if tok.startswith('--'):
            opt = tok.split('=', 1)[0]
            for action in parser._actions:
                if opt in action.option_strings:
                    dests.add(action.dest)
    return dests


def save_config(args, fname):
    os.makedirs(os.path.dirname(fname) or '.', exist_ok=True)
    with open(fname, 'w') as f:
        json.dump(dict(args), f, indent=2, sort_keys=True, default=str)
