"""What a benchmark runs: fresh seeded Solvers, fixed synthetic batches or the real loaders on generated JPEGs, a random
FAN when wing.ckpt is absent, and the description of the machine and the configuration."""
import datetime
import os
import platform
import sys
import time

import numpy as np
import torch
from munch import Munch

TRAINABLE = ('generator', 'mapping_network', 'style_encoder', 'discriminator')


def tf32_flags():
    out = {}
    for key, fn in (('cuda_matmul_allow_tf32', lambda: torch.backends.cuda.matmul.allow_tf32),
                    ('cudnn_allow_tf32', lambda: torch.backends.cudnn.allow_tf32),
                    ('float32_matmul_precision', torch.get_float32_matmul_precision),
                    ('cudnn_benchmark', lambda: torch.backends.cudnn.benchmark)):
        try:
            out[key] = fn()
        except Exception as e:  # an API that moved
            out[key] = f'unavailable: {e}'
    return out


def env_info(device):
    info = dict(device=str(device), device_type=device.type, torch=torch.__version__, cuda=torch.version.cuda,
                python=platform.python_version(), platform=platform.platform(), cpu_count=os.cpu_count(),
                torch_num_threads=torch.get_num_threads(), numpy=np.__version__,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'))
    try:
        info['cudnn'] = torch.backends.cudnn.version()
    except Exception:
        info['cudnn'] = None
    if device.type == 'cuda':
        props = torch.cuda.get_device_properties(device)
        info.update(device_name=torch.cuda.get_device_name(device), capability='%d.%d' % (props.major, props.minor),
                    device_mem_gib=round(props.total_memory / 2 ** 30, 2), multiprocessors=props.multi_processor_count)
    else:
        info['device_name'] = platform.processor() or platform.machine()
    try:
        import triton
        info['triton'] = triton.__version__
    except Exception:
        info['triton'] = None
    return info


def model_config(args):
    keys = ('preset', 'img_size', 'batch_size', 'num_domains', 'latent_dim', 'style_dim', 'hidden_dim', 'base_dim',
            'max_conv_dim', 'w_hpf', 'lambda_reg', 'lambda_sty', 'lambda_ds', 'lambda_cyc', 'ds_iter', 'lr', 'f_lr',
            'beta1', 'beta2', 'weight_decay', 'seed', 'compile', 'amp', 'num_workers', 'randcrop_prob', 'device',
            'train_img_dir', 'wing_path')
    return {k: args[k] for k in keys}


def ensure_wing(args, workdir, notes):
    """w_hpf > 0 needs FAN weights: without a file at --wing_path, random ones (same cost, meaningless masks)."""
    if args.w_hpf <= 0:
        return None
    if os.path.isfile(args.wing_path):
        return f'FAN weights from {args.wing_path}'
    from core.wing import FAN
    fname = os.path.join(workdir, 'wing_random.ckpt')
    torch.manual_seed(args.seed)
    torch.save({'state_dict': FAN().state_dict()}, fname)
    msg = (f'--wing_path {args.wing_path} not found: using a randomly initialised FAN saved to {fname} '
           f'(the same compute as the real wing.ckpt; the masks are meaningless)')
    notes.append(msg)
    print('note:', msg, file=sys.stderr, flush=True)
    args.wing_path = fname
    return msg


def _one_image(fname, res, seed):
    from PIL import Image
    rng = np.random.default_rng(seed)
    # a smooth random picture plus mild grain: compresses like a photo (~150 KB at 1024 px, quality 90), so that
    # decoding costs what decoding a dataset image costs (pure noise would be ~3x bigger and slower)
    base = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((res, res), Image.BICUBIC)
    arr = np.asarray(base, dtype=np.float32) + rng.standard_normal((res, res, 3), dtype=np.float32) * 4
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(fname, 'JPEG', quality=90)
    return os.path.getsize(fname)


def make_images(root, num_domains, n, res, seed):
    from concurrent.futures import ThreadPoolExecutor
    jobs = []
    for d in range(num_domains):
        os.makedirs(os.path.join(root, f'domain{d}'), exist_ok=True)
        for i in range(n):
            jobs.append((os.path.join(root, f'domain{d}', f'{i:05d}.jpg'), res, seed * 100003 + d * 10007 + i))
    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as ex:
        sizes = list(ex.map(lambda j: _one_image(*j), jobs))
    return dict(images_per_domain=n, num_domains=num_domains, image_res=res, seconds=round(time.perf_counter() - t, 2),
                mean_kib=round(sum(sizes) / len(sizes) / 1024, 1), folder=root)


def synthetic_inputs(args, device, seed):
    g = torch.Generator().manual_seed(seed)
    B, S, K = args.batch_size, args.img_size, args.num_domains
    x = [torch.rand(B, 3, S, S, generator=g) * 2 - 1 for _ in range(3)]
    inputs = Munch(x_src=x[0], y_src=torch.randint(0, K, (B,), generator=g), x_ref=x[1], x_ref2=x[2],
                   y_ref=torch.randint(0, K, (B,), generator=g), z_trg=torch.randn(B, args.latent_dim, generator=g),
                   z_trg2=torch.randn(B, args.latent_dim, generator=g))
    return Munch({k: v.to(device) for k, v in inputs.items()})


def build_loaders(args, device):
    from core.data_loader import get_train_loader
    common = dict(img_size=args.img_size, batch_size=args.batch_size, prob=args.randcrop_prob,
                  num_workers=args.num_workers, seed=args.seed, start_step=0, num_domains=args.num_domains,
                  skip_bad_images=args.skip_bad_images, pin_memory=device.type == 'cuda', latent_dim=args.latent_dim)
    t = time.perf_counter()
    src = get_train_loader(args.train_img_dir, which='source', **common)
    ref = get_train_loader(args.train_img_dir, which='reference', **common)
    return Munch(src=src, ref=ref, setup_s=round(time.perf_counter() - t, 2))


def new_solver(args, device, skip_unused_grads=True):
    """A Solver built from the seed (the same initial weights for every mode); args.compile compiles it."""
    from core.solver import Solver
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    return Solver(args, device, skip_unused_grads=skip_unused_grads)


def count_params(solver):
    return {n: sum(p.numel() for p in getattr(solver, n).parameters()) for n in TRAINABLE}


def dynamo_stats():
    """How much torch.compile did: graphs, recompilations, graph breaks (reasons), compile time."""
    try:
        from torch._dynamo.utils import counters
        out = dict(stats={k: int(v) for k, v in counters['stats'].items()},
                   graph_breaks=sum(counters['graph_break'].values()),
                   graph_break_reasons=[str(k)[:200] for k in list(counters['graph_break'])[:10]],
                   recompiles=int(sum(counters['recompiles'].values())) if 'recompiles' in counters else None)
        try:
            from torch._dynamo.utils import compile_times
            out['compile_times'] = str(compile_times(repr='str'))[-1500:]
        except Exception:
            pass
        return out
    except Exception as e:
        return dict(error=f'{type(e).__name__}: {e}')

