"""StarGAN v2: train, sample, evaluate, align, translate, export, serve.

    python main.py --mode train --preset demo                  # the quickstart: synthetic data, CPU, minutes
    python main.py --mode train --preset celeba_hq             # the paper's CelebA-HQ setting (data/celeba_hq)
    python main.py --mode sample --resume_iter 100000 --checkpoint_dir expr/checkpoints/celeba_hq
    torchrun --nproc_per_node 4 main.py --mode train ...       # one process per GPU
    python main.py --mode export --to onnx --checkpoint_dir expr/checkpoints/celeba_hq   # docs/deploy.md
    python main.py --mode serve --preset demo                  # a web page to translate your own images
"""
import os
import random
import sys

import numpy as np
import torch
from munch import Munch

from core.checkpoint import CheckpointWriteError, resolve_resume_step
from core.config import parse_args, save_config, summary
from core.data_loader import DataError, get_test_loader, get_train_loader
from core.machinery.distributed import barrier, cleanup, init_distributed
from core.machinery.side_jobs import SideJobError
from core.machinery.train_log import NonFiniteLossError
from core.machinery.wandb_log import WandbError, require_wandb
from core.solver import Solver


def subdirs(dname):
    return sorted(d for d in os.listdir(dname) if os.path.isdir(os.path.join(dname, d)))


def main(args):
    code = 0
    dist_info = init_distributed(args.device)
    device = dist_info.device  # chosen once, passed down
    if dist_info.rank == 0:
        print(summary(args, device))
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    random.seed(args.seed)
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True

    on_demo_data = False
    if args.preset == 'demo' and args.mode in ('train', 'sample', 'eval'):
        from core.demo.data import prepare_demo_data
        if dist_info.rank == 0:
            on_demo_data = prepare_demo_data(args.train_img_dir, args.val_img_dir, args.img_size,
                                             task=args.demo_task, colours=args.demo_colours)
        barrier()  # the other ranks read it next

    from core.inference.representative import check_representative
    check_representative(args)  # the defaults name assets/representative/...: one message saying how to get them

    if args.mode == 'train':
        if args.batch_size % dist_info.world_size:
            raise SystemExit(f'--batch_size {args.batch_size} (global) must be divisible by the number of '
                             f'processes ({dist_info.world_size})')
        local_batch = args.batch_size // dist_info.world_size
        require_wandb(args)  # --wandb without the package stops here, before any work
        start = resolve_resume_step(args.resume_iter, args.checkpoint_dir, args.trust_pickle)
        if start == 0 and args.init_from:  # a file that cannot be used stops here, before the run writes anything
            from core.files.finetune import read_init_file
            read_init_file(args)
        solver = Solver(args, device)
        common = dict(img_size=args.img_size, batch_size=local_batch, prob=args.randcrop_prob,
                      num_workers=args.num_workers, seed=args.seed, start_step=start, num_domains=args.num_domains,
                      skip_bad_images=args.skip_bad_images, rank=dist_info.rank, world_size=dist_info.world_size,
                      pin_memory=device.type == 'cuda', latent_dim=args.latent_dim)
        loaders = Munch(src=get_train_loader(args.train_img_dir, which='source', **common),
                        ref=get_train_loader(args.train_img_dir, which='reference', **common),
                        val=get_test_loader(args.val_img_dir, img_size=args.img_size,
                                            batch_size=args.val_batch_size, shuffle=True,
                                            num_workers=args.num_workers, num_domains=args.num_domains,
                                            seed=args.seed))
        args.domains = args.domains or ','.join(loaders.src.domains)  # names for --mode translate (args.json)
        if dist_info.rank == 0:
            save_config(args, os.path.join(args.checkpoint_dir, 'args.json'))
        solver.train(loaders)
        if on_demo_data:  # rank 0 only: how well the demo translates, from what its data's generator knows
            from core.demo.score import score_demo
            score_demo(solver.nets_ema, args, device, step=args.total_iters)
    elif args.mode == 'sample':
        for flag, d in (('--src_dir', args.src_dir), ('--ref_dir', args.ref_dir)):
            if os.path.isdir(d) and len(subdirs(d)) != args.num_domains:
                raise DataError(f'{flag}: {d} has {len(subdirs(d))} domain folders but --num_domains is '
                                f'{args.num_domains}')
        solver = Solver(args, device)
        loaders = Munch(src=get_test_loader(args.src_dir, img_size=args.img_size, batch_size=args.val_batch_size,
                                            shuffle=False, num_workers=args.num_workers, flag='--src_dir'),
                        ref=get_test_loader(args.ref_dir, img_size=args.img_size, batch_size=args.val_batch_size,
                                            shuffle=False, num_workers=args.num_workers, flag='--ref_dir'))
        solver.sample(loaders)
    elif args.mode == 'eval':
        solver = Solver(args, device)
        solver.evaluate()
    elif args.mode == 'align':
        from core.wing import align_faces
        align_faces(args, args.inp_dir, args.out_dir, device=device)
    elif args.mode == 'translate':
        from core.inference.translate import translate_cli
        code = translate_cli(args, device)  # 1 when some input was skipped
    elif args.mode == 'export':
        from core.inference.export import export_cli
        export_cli(args)
    elif args.mode == 'serve':
        from core.inference.studio import serve_cli
        code = serve_cli(args, device)
    cleanup()
    return code


if __name__ == '__main__':
    args = parse_args()
    try:
        sys.exit(main(args))
    except (DataError, FileNotFoundError, NonFiniteLossError, CheckpointWriteError, SideJobError, WandbError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as e:
        print(f'\n{e or "interrupted"}', file=sys.stderr)
        sys.exit(130)
