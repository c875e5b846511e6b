"""The Solver wires networks, optimisers, data and the objectives of core/losses.py into training, sampling and
evaluation (SPEC sections 3, 5, 6).

    solver = Solver(args, device)
    solver.train(loaders)      # loaders: Munch(src, ref, val)
    solver.sample(loaders)     # loaders: Munch(src, ref)
    solver.evaluate()
"""
import contextlib
import datetime
import json
import math
import os
import random
import signal
import time

import numpy as np
import torch
import torch.nn as nn
from munch import Munch
from tqdm import tqdm

from core import utils
from core.checkpoint import CheckpointIO, StateDict, atomic_torch_save
from core.data_loader import InputFetcher
from core.distributed import (all_reduce_mean, all_reduce_mean_grads, barrier, get_rank, get_world_size,
                              is_main_process)
from core.losses import (adv_loss, compute_d_loss, compute_g_loss, d_logits_and_r1,  # noqa: F401 (public surface)
                         lambda_ds_at, moving_average, r1_reg)
from core.model import build_model

LOSS_NAMES = ['D/latent_real', 'D/latent_fake', 'D/latent_reg', 'D/ref_real', 'D/ref_fake', 'D/ref_reg',
              'G/latent_adv', 'G/latent_sty', 'G/latent_ds', 'G/latent_cyc',
              'G/ref_adv', 'G/ref_sty', 'G/ref_ds', 'G/ref_cyc']


class NonFiniteLossError(RuntimeError):
    pass


def resolve_device(device_arg):
    if device_arg in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device_arg)


def find_latest_step(checkpoint_dir):
    """Highest step with all three network/optimiser files present (0 if none)."""
    if not os.path.isdir(checkpoint_dir):
        return 0
    steps = set()
    for f in os.listdir(checkpoint_dir):
        if f.endswith('_optims.ckpt') and f[:6].isdigit():
            step = int(f[:6])
            if all(os.path.exists(os.path.join(checkpoint_dir, '%06d_%s.ckpt' % (step, k))) for k in ('nets', 'nets_ema')):
                steps.add(step)
    return max(steps, default=0)


class Solver(nn.Module):
    def __init__(self, args, device=None):
        super().__init__()
        self.args = args
        self.device = resolve_device(args.get('device')) if device is None else torch.device(device)
        self.nets, self.nets_ema = build_model(args)
        # children of the Solver, so that self.to(device) moves them all
        for name, module in self.nets.items():
            setattr(self, name, module)
        for name, module in self.nets_ema.items():
            setattr(self, name + '_ema', module)

        if args.mode == 'train':
            self.optims = Munch()
            for net in self.nets.keys():
                if net == 'fan':
                    continue
                self.optims[net] = torch.optim.Adam(
                    params=self.nets[net].parameters(),
                    lr=args.f_lr if net == 'mapping_network' else args.lr,
                    betas=[args.beta1, args.beta2],
                    weight_decay=args.weight_decay)
            trainable = {k: v for k, v in self.nets.items() if k != 'fan'}
            ema = {k: v for k, v in self.nets_ema.items() if k != 'fan'}
            self.train_state = StateDict()
            self.ckptios = [
                CheckpointIO(os.path.join(args.checkpoint_dir, '{:06d}_nets.ckpt'), **trainable),
                CheckpointIO(os.path.join(args.checkpoint_dir, '{:06d}_nets_ema.ckpt'), **ema),
                CheckpointIO(os.path.join(args.checkpoint_dir, '{:06d}_optims.ckpt'), **self.optims)]
        else:
            ema = {k: v for k, v in self.nets_ema.items() if k != 'fan'}
            self.ckptios = [CheckpointIO(os.path.join(args.checkpoint_dir, '{:06d}_nets_ema.ckpt'), **ema)]
        # skip the weight gradients the reference computes and discards (same results; scripts/benchmark.py turns it
        # off to measure the reference's work)
        self.skip_unused_grads = True
        self.logits_and_r1 = None  # D(x_real) and R1 in one function; set by _compile (eager: the reference's form)
        self.cudagraphs = False  # --compile_mode reduce-overhead
        self.to(self.device)

    # ------------------------------------------------------------------------------------------------ checkpoints
    def _state_fname(self, step):
        return os.path.join(self.args.checkpoint_dir, '%06d_state.ckpt' % step)

    def _save_checkpoint(self, step):
        if not is_main_process():
            return
        for ckptio in self.ckptios:
            ckptio.save(step)
        # written last: its presence marks a complete checkpoint written by this project
        state = dict(step=step, lambda_ds=lambda_ds_at(step, self.args.lambda_ds, self.args.ds_iter),
                     world_size=get_world_size(), torch_rng=torch.get_rng_state(), numpy_rng=np.random.get_state(),
                     python_rng=random.getstate(),
                     cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        atomic_torch_save(state, self._state_fname(step))

    def _load_checkpoint(self, step):
        for ckptio in self.ckptios:
            ckptio.load(step)
        fname = self._state_fname(step)
        if self.args.mode == 'train' and os.path.exists(fname):
            state = torch.load(fname, map_location='cpu', weights_only=False)
            torch.set_rng_state(state['torch_rng'])
            np.random.set_state(state['numpy_rng'])
            random.setstate(state['python_rng'])
            if state.get('cuda_rng') is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state['cuda_rng'])

    def _reset_grad(self):
        for optim in self.optims.values():
            optim.zero_grad(set_to_none=True)

    def _update(self, loss, *names):
        """zero_grad on every optimiser (as the reference), backward, step the named networks."""
        self._reset_grad()
        loss.backward()
        self._step(*names)

    def _step(self, *names):
        """All-reduce (under torchrun) and step the optimisers of the named networks."""
        for name in names:
            all_reduce_mean_grads(list(self.nets[name].parameters()))
            self.optims[name].step()

    # ------------------------------------------------------------------------------------------------ training
    def train_step(self, inputs, step):
        """One iteration (SPEC section 3): D latent, D reference, G latent (G, F, E step), G reference (G steps),
        EMA. Returns the 14 loss terms as one detached tensor (no host sync)."""
        args, nets, nets_ema = self.args, self.nets, self.nets_ema
        x_real, y_org = inputs.x_src, inputs.y_src
        x_ref, x_ref2, y_trg = inputs.x_ref, inputs.x_ref2, inputs.y_ref
        z_trg, z_trg2 = inputs.z_trg, inputs.z_trg2
        weights = Munch(w_hpf=args.w_hpf, lambda_reg=args.lambda_reg, lambda_sty=args.lambda_sty,
                        lambda_cyc=args.lambda_cyc, lambda_ds=lambda_ds_at(step, args.lambda_ds, args.ds_iter))
        if self.cudagraphs:  # a new iteration: CUDA-graph outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        masks = nets.fan.get_heatmap(x_real) if args.w_hpf > 0 else None

        with self._autocast():
            d_loss, d_losses_latent = compute_d_loss(nets, weights, x_real, y_org, y_trg, z_trg=z_trg, masks=masks,
                                                    logits_and_r1=self.logits_and_r1)
        self._update(d_loss, 'discriminator')

        with self._autocast():
            d_loss, d_losses_ref = compute_d_loss(nets, weights, x_real, y_org, y_trg, x_ref=x_ref, masks=masks,
                                                 logits_and_r1=self.logits_and_r1)
        self._update(d_loss, 'discriminator')

        # The G steps need the discriminator (and, in the reference step, the style encoder) only for the gradient
        # with respect to their inputs: the reference also computes their weight gradients and then throws them away
        # (zero_grad before their next step). Frozen here, so that backward skips that work; G's gradients are the same.
        with self._frozen('discriminator'):
            with self._autocast():
                g_loss, g_losses_latent = compute_g_loss(nets, weights, x_real, y_org, y_trg, z_trgs=[z_trg, z_trg2],
                                                         masks=masks)
            self._update(g_loss, 'generator', 'mapping_network', 'style_encoder')

        with self._frozen('discriminator', 'style_encoder', 'mapping_network'):
            with self._autocast():
                g_loss, g_losses_ref = compute_g_loss(nets, weights, x_real, y_org, y_trg, x_refs=[x_ref, x_ref2],
                                                      masks=masks)
            self._update(g_loss, 'generator')

        for name in ('generator', 'mapping_network', 'style_encoder'):
            moving_average(nets[name], nets_ema[name], beta=args.get('ema_beta', 0.999))

        terms = [*d_losses_latent.values(), *d_losses_ref.values(), *g_losses_latent.values(), *g_losses_ref.values()]
        return torch.stack([t.float() for t in terms])

    @contextlib.contextmanager
    def _frozen(self, *names):
        """The parameters of the named networks do not require gradients inside the block (skip_unused_grads)."""
        params = [p for name in names for p in self.nets[name].parameters() if p.requires_grad] \
            if self.skip_unused_grads else []
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def _autocast(self):
        if self.args.get('amp', 'none') == 'bf16':
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return torch.autocast(self.device.type, enabled=False)

    def train(self, loaders):
        args = self.args
        main = is_main_process()
        start = args.resume_iter
        if start < 0:  # --resume_iter -1: the latest complete checkpoint
            start = find_latest_step(args.checkpoint_dir)
        if start > 0:
            self._load_checkpoint(start)
        if args.get('compile'):
            self._compile()

        fetcher = InputFetcher(loaders.src, loaders.ref, args.latent_dim, 'train', self.device)
        inputs_val = next(InputFetcher(loaders.val, None, args.latent_dim, 'val', self.device)) if main else None
        logger = TrainLogger(args, start) if main else None

        stop = _StopFlag()
        nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # any non-finite term since the last check
        last_terms, last_saved = None, None
        print(f'Start training from step {start} (global batch {args.batch_size}, {get_world_size()} process(es), '
              f'device {self.device})...')
        progress = tqdm(range(start, args.total_iters), initial=start, total=args.total_iters,
                        disable=not main, dynamic_ncols=True, desc='train')
        step = start
        try:
            with stop.installed():
                for i in progress:
                    inputs = next(fetcher)
                    try:
                        terms = self.train_step(inputs, i)
                    except Exception as e:
                        if args.get('compile') and type(e).__module__.startswith(('torch._dynamo', 'torch._inductor')):
                            raise RuntimeError(
                                f'--compile: torch.compile failed at step {i + 1} ({type(e).__name__}). Train without '
                                f'--compile (the same computation, eager), or try --compile_backend aot_eager to tell '
                                f'capture problems from code generation ones.') from e
                        raise
                    step = i + 1
                    is_log = args.print_every > 0 and step % args.print_every == 0
                    is_save = args.save_every > 0 and step % args.save_every == 0
                    if is_log or is_save or step == args.total_iters:  # the same steps on every rank
                        terms = all_reduce_mean(terms)  # the global batch's losses (a no-op in one process)
                    nonfinite |= ~torch.isfinite(terms).all()
                    last_terms = terms

                    if is_log or is_save or stop.requested or step == args.total_iters:
                        if bool(nonfinite):  # the only host sync of the loop, on logging/saving steps
                            self._raise_nonfinite(terms, step)
                    if main and is_log:
                        logger.log(step, terms.tolist(), lambda_ds_at(step, args.lambda_ds, args.ds_iter))
                    if main and args.sample_every > 0 and step % args.sample_every == 0:
                        utils.debug_image(self.nets_ema, args, inputs=inputs_val, step=step)
                        logger.images(step)
                        from core.plots import plot_losses  # the curves so far, beside the images (core/plots.py)
                        plot_losses(logger.jsonl.name, os.path.join(args.sample_dir, 'losses.png'))
                    if is_save:
                        self._save_checkpoint(step)
                        last_saved = step
                    if args.eval_every > 0 and step % args.eval_every == 0:
                        self.evaluate_nets(step)
                    if stop.requested:
                        break
        finally:
            progress.close()
        if stop.requested:
            if last_saved != step:
                print(f'\n{stop.signame}: saving a checkpoint of step {step} before exiting...')
                self._save_checkpoint(step)
            barrier()
            if logger:
                logger.close()
            raise KeyboardInterrupt(f'stopped by {stop.signame} at step {step}; '
                                    f'resume with --resume_iter {step}')
        if last_saved != step and step > start:
            self._save_checkpoint(step)
        if logger:
            logger.close()
        return last_terms

    def _raise_nonfinite(self, terms, step):
        bad = [n for n, v in zip(LOSS_NAMES, terms.tolist()) if not math.isfinite(v)]
        where = f'at step {step}' if bad else f'between the last check and step {step}'
        raise NonFiniteLossError(
            f'Non-finite loss {where}: {", ".join(bad) or "(a term went non-finite and the latest values are finite)"}.'
            f' Training stopped; the latest checkpoint on disk is from before this. Lower --lr, or check the data.')

    def _compile(self):
        """torch.compile every training network in place (state_dict keys unchanged) and the discriminator's real
        branch with its R1 penalty as one function (d_logits_and_r1): the compiled autograd has no double backward,
        so the reference's autograd.grad(create_graph=True) form cannot run through compiled code."""
        args = self.args
        kw = dict(mode=None if args.get('compile_mode', 'default') == 'default' else args.compile_mode,
                  backend=args.get('compile_backend', 'inductor'))
        for name in ('generator', 'mapping_network', 'style_encoder', 'discriminator'):
            self.nets[name].compile(**kw)
        if 'fan' in self.nets:  # the masks: the FAN and the post-processing (~20 passes over 98 maps) in one graph
            fan = self.nets.fan
            fan.get_heatmap = torch.compile(fan.get_heatmap, **kw)
        discriminator = self.nets.discriminator
        compiled = torch.compile(lambda x_real, y_org: d_logits_and_r1(discriminator, x_real, y_org), **kw)
        self.cudagraphs = kw['mode'] == 'reduce-overhead'

        def logits_and_r1(x_real, y_org):
            out, loss_reg = compiled(x_real, y_org)
            # under CUDA graphs the outputs live in the graph's memory, which the D step on reference images
            # overwrites while the latent step's R1 value is still to be logged: copies (a few bytes)
            return (out.clone(), loss_reg.clone()) if self.cudagraphs else (out, loss_reg)
        self.logits_and_r1 = logits_and_r1

    # ------------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, loaders):
        args = self.args
        os.makedirs(args.result_dir, exist_ok=True)
        self._load_checkpoint(args.resume_iter)
        src = next(InputFetcher(loaders.src, None, args.latent_dim, 'test', self.device))
        ref = next(InputFetcher(loaders.ref, None, args.latent_dim, 'test', self.device))

        fname = os.path.join(args.result_dir, 'reference.jpg')
        print('Working on {}...'.format(fname))
        utils.translate_using_reference(self.nets_ema, args, src.x, ref.x, ref.y, fname)

        # latent grids: the reference has the code but never calls it in sample mode
        N = src.x.size(0)
        g = torch.Generator().manual_seed(args.seed)
        y_trg_list = [torch.full((N,), y, dtype=torch.long, device=self.device)
                      for y in range(min(args.num_domains, 5))]
        z_trg_list = torch.randn(args.num_outs_per_domain, 1, args.latent_dim, generator=g).repeat(1, N, 1)
        z_trg_list = z_trg_list.to(self.device)
        for psi in [0.5, 0.7, 1.0]:
            fname = os.path.join(args.result_dir, 'latent_psi_%.1f.jpg' % psi)
            print('Working on {}...'.format(fname))
            utils.translate_using_latent(self.nets_ema, args, src.x, y_trg_list, z_trg_list, psi, fname,
                                         generator=torch.Generator().manual_seed(args.seed + 1))

        from core import video
        videos = [('video_ref.mp4', lambda f: video.video_ref(self.nets_ema, args, src.x, ref.x, ref.y, f)),
                  ('video_latent.mp4', lambda f: video.video_latent(self.nets_ema, args, src.x, y_trg_list,
                                                                    z_trg_list, 1.0, f))]
        for name, make in videos:
            fname = os.path.join(args.result_dir, name)
            print('Working on {}...'.format(fname))
            try:
                make(fname)
            except (video.FFmpegNotFoundError, ValueError) as e:
                print(f'Skipping {name}: {e} (the images above were written)')

    # ------------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self):
        args = self.args
        step = args.resume_iter
        if step < 0:
            step = find_latest_step(args.checkpoint_dir)
        self._load_checkpoint(step)
        self.evaluate_nets(step)

    def evaluate_nets(self, step):
        if not is_main_process():
            barrier()
            return
        from metrics.eval import calculate_metrics
        for mode in ('latent', 'reference'):
            calculate_metrics(self.nets_ema, self.args, step, mode=mode)
        barrier()


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop finishes the current iteration, saves and exits."""

    def __init__(self):
        self.requested = False
        self.signame = None

    def _handler(self, signum, frame):
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True
        self.signame = signal.Signals(signum).name

    def installed(self):
        flag = self

        class _Ctx:
            def __enter__(self):
                self.old = {}
                for sig in (signal.SIGINT, signal.SIGTERM):
                    try:
                        self.old[sig] = signal.signal(sig, flag._handler)
                    except ValueError:  # not the main thread
                        pass

            def __exit__(self, *exc):
                for sig, old in self.old.items():
                    signal.signal(sig, old)
        return _Ctx()


class TrainLogger:
    """The reference's log line every print_every, the same numbers as JSON lines in checkpoint_dir/train_log.jsonl,
    and TensorBoard scalars/images when the tensorboard package is installed."""

    def __init__(self, args, start):
        self.args = args
        self.start_time = time.time()
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        self.jsonl = open(os.path.join(args.checkpoint_dir, 'train_log.jsonl'), 'a')
        with open(os.path.join(args.checkpoint_dir, 'args.json'), 'w') as f:
            json.dump(dict(args), f, indent=2, sort_keys=True, default=str)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(args.checkpoint_dir, 'tensorboard'))
        except Exception:  # tensorboard is optional
            pass

    def log(self, step, values, lambda_ds):
        elapsed = str(datetime.timedelta(seconds=time.time() - self.start_time))[:-7]
        all_losses = dict(zip(LOSS_NAMES, values))
        all_losses['G/lambda_ds'] = lambda_ds
        line = 'Elapsed time [%s], Iteration [%i/%i], ' % (elapsed, step, self.args.total_iters)
        line += ' '.join(['%s: [%.4f]' % (k, v) for k, v in all_losses.items()])
        tqdm.write(line)
        self.jsonl.write(json.dumps(dict(step=step, elapsed_s=round(time.time() - self.start_time, 3),
                                         **all_losses)) + '\n')
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in all_losses.items():
                self.tb.add_scalar(k, v, step)

    def images(self, step):
        if self.tb is None:
            return
        from PIL import Image
        for kind in ('cycle_consistency', 'reference', 'latent_psi_1.0'):
            fname = os.path.join(self.args.sample_dir, '%06d_%s.jpg' % (step, kind))
            if os.path.exists(fname):
                img = np.asarray(Image.open(fname).convert('RGB'))
                self.tb.add_image(kind, img, step, dataformats='HWC')

    def close(self):
        self.jsonl.close()
        if self.tb is not None:
            self.tb.close()
