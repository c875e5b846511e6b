"""The Solver: networks, optimisers and the training loop of SPEC section 3, wiring the objectives of core/losses.py.

    solver = Solver(args, device)
    solver.train(loaders)      # loaders: Munch(src, ref, val)
    solver.sample(loaders)     # loaders: Munch(src, ref)  -> core/sampling.py
    solver.evaluate()          # FID and LPIPS             -> metrics/eval.py

Checkpoint files: core/checkpoint.py (their checksums: core/machinery/integrity.py; the training set a resume must
share: core/machinery/run_identity.py); logging and the stop signals: core/machinery/train_log.py; --compile:
core/machinery/compile.py; the jobs beside training: core/machinery/side_jobs.py.
"""
import contextlib

import torch
import torch.nn as nn
from munch import Munch
from tqdm import tqdm

from core import utils
from core.checkpoint import RunCheckpoint, remove_leftover_temp_files, resolve_resume_step
from core.data_loader import InputFetcher
from core.losses import (adv_loss, compute_d_loss, compute_g_loss, d_logits_and_r1,  # noqa: F401 (public surface)
                         lambda_ds_at, moving_average, r1_reg)
from core.machinery.compile import compile_nets, cudagraphs_enabled, explain_compile_errors
from core.machinery.distributed import (all_reduce_mean, all_reduce_mean_grads, any_rank, barrier, get_world_size,
                                       is_main_process, resolve_device)
from core.machinery.micro_batch import resolve_micro_batch, split_batch, weighted_terms
from core.machinery.side_jobs import SideJobError, SideJobs, check_before_training
from core.machinery.train_log import LOSS_NAMES, NonFiniteGuard, NonFiniteLossError, TrainLogger, stop_signals  # noqa: F401
from core.model import build_model, masks_of


def optim_impl_kwargs(args):
    """Adam's keyword arguments for --optim_impl. The implementations compute the same update in a different order
    of float operations; on a small network the per-parameter loop (PyTorch's choice on the CPU) costs more in calls
    than in arithmetic."""
    impl = args.get('optim_impl', 'auto')
    return {'auto': {}, 'loop': dict(foreach=False), 'foreach': dict(foreach=True), 'fused': dict(fused=True)}[impl]


IMAGES = ('x_src', 'x_ref', 'x_ref2')


@torch.no_grad()
def match_state_layouts(optims):
    """Each optimiser state tensor in its parameter's memory layout. A state loaded from a file keeps the layout it was
    saved in, and fused Adam on the CPU walks parameter, gradient and state as one flat buffer: a channels_last
    parameter with a contiguous state (a run resumed under another --memory_format) would be updated wrongly, silently."""
    for optim in optims.values():
        for p, state in optim.state.items():
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p).copy_(value)


def lr_factor(step, total_iters, decay_from):
    """The share of each network's learning rate used at (0-based) iteration `step`: 1 throughout without a decay
    (decay_from 0, the reference), else 1 before `decay_from` and then a straight line to 0 at `total_iters`."""
    if decay_from <= 0 or step < decay_from or total_iters <= decay_from:
        return 1.0
    return max(0.0, (total_iters - step) / (total_iters - decay_from))


def every(period, step):
    return period > 0 and step % period == 0


@contextlib.contextmanager
def frozen(modules):
    """The parameters of the modules do not require gradients inside the block."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class Solver(nn.Module):
    """skip_unused_grads=False computes the weight gradients of D (and E, F) in the G steps that the reference computes
    and throws away: the same results, more work (scripts/benchmark.py's reference_work mode)."""

    def __init__(self, args, device=None, skip_unused_grads=True):
        super().__init__()
        # device: the caller's (main.py chooses it once); Solver(args) alone, the reference's signature, takes --device
        self.args = args
        self.device = resolve_device(args.device) if device is None else torch.device(device)
        self.skip_unused_grads = skip_unused_grads
        self.nets, self.nets_ema = build_model(args)
        for name, module in self.nets.items():  # children of the Solver, so that self.to(device) moves them all
            setattr(self, name, module)
        for name, module in self.nets_ema.items():
            setattr(self, name + '_ema', module)
        self.optims = None
        if args.mode == 'train':
            self.optims = Munch({net: torch.optim.Adam(
                params=self.nets[net].parameters(), lr=self._lr(net),
                betas=[args.beta1, args.beta2], weight_decay=args.weight_decay, **optim_impl_kwargs(args))
                for net in self.nets if net != 'fan'})
        self.checkpoint = RunCheckpoint(args.checkpoint_dir, self.nets, self.nets_ema, self.optims,
                                        trust_pickle=args.trust_pickle)
        self.to(self.device)
        self.channels_last = args.get('memory_format', 'contiguous') == 'channels_last'
        if self.channels_last:  # the conv weights (and their gradients and Adam states, which follow them)
            self.to(memory_format=torch.channels_last)
        self.logits_and_r1 = None  # D(x_real) with R1 in one function: --compile's form (None: the reference's)
        self.micro_batch = 0  # images per chunk of the training step (0: the whole batch)
        if args.mode == 'train':
            local_batch = max(1, args.batch_size // get_world_size())
            self.micro_batch = resolve_micro_batch(args, self.device, local_batch, solver_cls=type(self))
        if args.compile and args.mode == 'train':
            self.logits_and_r1 = compile_nets(self.nets, args)

    def _lr(self, net):
        """F: --f_lr; D and E: --d_lr, --e_lr where set (> 0); else --lr (the reference's)."""
        if net == 'mapping_network':
            return self.args.f_lr
        lr = {'discriminator': self.args.get('d_lr', 0), 'style_encoder': self.args.get('e_lr', 0)}.get(net, 0)
        return lr if lr > 0 else self.args.lr

    # ------------------------------------------------------------------------------------------------ one iteration
    def train_step(self, inputs, step):
        """D latent, D reference, G latent (steps G, F, E), G reference (steps G), EMA. Returns the 14 loss terms as
        one detached tensor (no host sync). With --micro_batch each step runs over chunks of the batch, their
        gradients accumulated (core/machinery/micro_batch.py): the whole batch's update and terms, to float rounding."""
        args, nets = self.args, self.nets
        if args.get('lr_decay_from', 0) > 0:  # a function of the step alone: a resume continues the same schedule
            factor = lr_factor(step, args.total_iters, args.lr_decay_from)
            for name, optim in self.optims.items():
                for group in optim.param_groups:
                    group['lr'] = self._lr(name) * factor
        weights = Munch(w_hpf=args.w_hpf, lambda_reg=args.lambda_reg, lambda_sty=args.lambda_sty,
                        lambda_cyc=args.lambda_cyc, lambda_ds=lambda_ds_at(step, args.lambda_ds, args.ds_iter))
        if self.channels_last:  # oneDNN's own layout: no reorder before and after each convolution
            inputs = Munch(inputs, **{k: inputs[k].contiguous(memory_format=torch.channels_last)
                                      for k in IMAGES if k in inputs})
        if cudagraphs_enabled(args):  # a new iteration: CUDA-graph outputs of the last one may be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        # the masks of the whole batch, once: the same values whatever the chunks (the FAN runs without gradient)
        chunks = split_batch(inputs, masks_of(nets, inputs.x_src), self.micro_batch)

        d_losses_latent = self._step(chunks, lambda c: compute_d_loss(
            nets, weights, c.x_src, c.y_src, c.y_ref, z_trg=c.z_trg, masks=c.masks,
            logits_and_r1=self.logits_and_r1), steps=('discriminator',))
        d_losses_ref = self._step(chunks, lambda c: compute_d_loss(
            nets, weights, c.x_src, c.y_src, c.y_ref, x_ref=c.x_ref, masks=c.masks,
            logits_and_r1=self.logits_and_r1), steps=('discriminator',))

        # The G steps need D (and, in the reference step, E and F) only for the gradient with respect to their inputs;
        # frozen, their weight gradients (computed and thrown away by the reference) are skipped. G's are the same.
        g_losses_latent = self._step(chunks, lambda c: compute_g_loss(
            nets, weights, c.x_src, c.y_src, c.y_ref, z_trgs=[c.z_trg, c.z_trg2], masks=c.masks),
            steps=('generator', 'mapping_network', 'style_encoder'), frozen=('discriminator',))
        g_losses_ref = self._step(chunks, lambda c: compute_g_loss(
            nets, weights, c.x_src, c.y_src, c.y_ref, x_refs=[c.x_ref, c.x_ref2], masks=c.masks),
            steps=('generator',), frozen=('discriminator', 'style_encoder', 'mapping_network'))

        for name in ('generator', 'mapping_network', 'style_encoder'):
            moving_average(nets[name], self.nets_ema[name], beta=args.ema_beta)
        terms = [*d_losses_latent.values(), *d_losses_ref.values(), *g_losses_latent.values(), *g_losses_ref.values()]
        # float32 (bf16 terms under --amp promoted); float64 networks (the exactness tests) keep their precision
        return torch.stack([t if t.dtype == torch.float64 else t.float() for t in terms])

    def _step(self, chunks, loss_of, steps, frozen=()):
        """zero_grad on every optimiser (as the reference); per chunk, the loss (with the `frozen` networks frozen)
        and its backward, weighted by the chunk's share of the batch; then, once, the all-reduce (torchrun) and the
        step of each network in `steps`. Returns the batch's loss terms."""
        for optim in self.optims.values():
            optim.zero_grad(set_to_none=True)
        parts = []
        for share, chunk in chunks:
            with self._frozen(*frozen), self._autocast():
                loss, terms = loss_of(chunk)
            (loss if len(chunks) == 1 else share * loss).backward()  # one chunk: the unchunked graph, bit for bit
            parts.append((share, terms))
        for name in steps:
            all_reduce_mean_grads(list(self.nets[name].parameters()))
            self.optims[name].step()
        return weighted_terms(parts)

    def _frozen(self, *names):
        return frozen([self.nets[name] for name in names] if self.skip_unused_grads else [])

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.args.amp == 'bf16')

    # ------------------------------------------------------------------------------------------------ the loop
    def train(self, loaders):
        from core.machinery.run_identity import check_resume, fingerprint
        args, main = self.args, is_main_process()
        if main:
            remove_leftover_temp_files(args.checkpoint_dir)
        start = resolve_resume_step(args.resume_iter, args.checkpoint_dir, args.trust_pickle)
        self.data_fingerprint = fingerprint(loaders.src, args.train_img_dir)  # recorded in every state file
        if start > 0:
            state = self.checkpoint.load(start, restore_rng=True)
            check_resume(state, self.data_fingerprint, args, start)
        elif args.init_from:  # fine-tuning (core/files/finetune.py); a resume of such a run loads its own checkpoint
            from core.files.finetune import init_from
            init_from(self.nets, self.nets_ema, args)
        match_state_layouts(self.optims)
        # a folder the run cannot write to, or missing evaluation weights: said now, not at step 5000; every rank
        # learns of it (one collective) and stops before its first iteration, not in it
        problem = None
        if main:
            try:
                check_before_training(args)
            except SideJobError as e:
                problem = e
        if any_rank(problem is not None):
            raise problem or SideJobError('rank 0 found a problem before the first iteration (its output says which)')
        fetcher = InputFetcher(loaders.src, loaders.ref, args.latent_dim, 'train', self.device)
        inputs_val = next(InputFetcher(loaders.val, None, args.latent_dim, 'val', self.device)) if main else None
        logger = TrainLogger(args, start) if main else None
        guard, step, last_saved, terms = NonFiniteGuard(self.device), start, None, None
        jobs = SideJobs()  # what fails beside training stops the run at its step, saved (core/machinery/side_jobs.py)
        print(f'Start training from step {start} (global batch {args.batch_size}, {get_world_size()} process(es), '
              f'device {self.device})...')
        with stop_signals() as stop, tqdm(range(start, args.total_iters), initial=start, total=args.total_iters,
                                          disable=not main, dynamic_ncols=True, desc='train') as progress:
            for step in (i + 1 for i in progress):
                with explain_compile_errors(args, step):
                    terms = self.train_step(next(fetcher), step - 1)
                is_log, is_save = every(args.print_every, step), every(args.save_every, step)
                is_sample, is_eval = every(args.sample_every, step), every(args.eval_every, step)
                if is_log or is_save or step == args.total_iters:  # the same steps on every rank
                    terms = all_reduce_mean(terms)  # the global batch's losses (a no-op in one process)
                guard.update(terms)
                if is_log or is_save or stop.requested or step == args.total_iters:
                    guard.check(terms, step)  # the loop's only host sync, on these steps
                if main and is_log:
                    values = jobs.run('the training log (train_log.jsonl)', step, logger.log, step, terms.tolist(),
                                      lambda_ds_at(step, args.lambda_ds, args.ds_iter))
                    if values is not None:
                        jobs.run('TensorBoard', step, logger.scalars, step, values)
                        jobs.run('Weights & Biases', step, logger.wandb_scalars, step, values)
                if main and is_sample:
                    jobs.run('the sample grids', step, utils.debug_image, self.nets_ema, args, inputs_val, step)
                    jobs.run('the loss plot (losses.png)', step, logger.plot)
                    jobs.run('TensorBoard', step, logger.tb_images, step)
                    jobs.run('Weights & Biases', step, logger.wandb_images, step)
                if is_eval:
                    if main:
                        jobs.run('the evaluation', step, self._evaluate_main, step)
                    barrier()  # the other ranks wait for rank 0's evaluation
                if (is_log or is_sample or is_eval) and any_rank(jobs.failure is not None):
                    guard.check(terms, step)  # non-finite weights are not worth a checkpoint
                    if jobs.failure is None:  # this rank's jobs went well; rank 0's did not
                        jobs.failure = ('a side job of rank 0', step, 'see its output')
                    break
                if is_save:
                    last_saved = self._save(step)
                if stop.requested:
                    print(f'\n{stop.signame}: saving a checkpoint of step {step} before exiting...')
                    break
        if last_saved != step and step > start:
            self._save(step)
        if logger:
            jobs.run('the training log (closing it)', step, logger.close)
        if jobs.failure is not None:
            barrier()
            raise SideJobError(jobs.message(step if step > start else None))
        if stop.requested:
            barrier()
            raise KeyboardInterrupt(f'stopped by {stop.signame} at step {step}; resume with --resume_iter {step}')
        return terms

    def _evaluate_main(self, step):
        from metrics.eval import MODES, calculate_metrics
        for mode in MODES:
            calculate_metrics(self.nets_ema, self.args, step, mode=mode)

    def _save(self, step):
        if is_main_process():
            self.checkpoint.save(step, lambda_ds=lambda_ds_at(step, self.args.lambda_ds, self.args.ds_iter),
                                 world_size=get_world_size(), data=getattr(self, 'data_fingerprint', None))
        return step

    # ------------------------------------------------------------------------------------------------ other modes
    @torch.no_grad()
    def sample(self, loaders):
        from core.sampling import sample
        self.checkpoint.load(resolve_resume_step(self.args.resume_iter, self.args.checkpoint_dir,
                                                 self.args.trust_pickle))
        src = next(InputFetcher(loaders.src, None, self.args.latent_dim, 'test', self.device))
        ref = next(InputFetcher(loaders.ref, None, self.args.latent_dim, 'test', self.device))
        return sample(self.nets_ema, self.args, src, ref)

    @torch.no_grad()
    def evaluate(self):
        step = resolve_resume_step(self.args.resume_iter, self.args.checkpoint_dir, self.args.trust_pickle)
        self.checkpoint.load(step)
        self.evaluate_nets(step)

    def evaluate_nets(self, step):
        from metrics.eval import evaluate
        evaluate(self.nets_ema, self.args, step)
