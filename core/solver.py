"""The Solver: networks, optimisers and the training loop of SPEC section 3, wiring the objectives of core/losses.py.

    solver = Solver(args, device)
    solver.train(loaders)      # loaders: Munch(src, ref, val)
    solver.sample(loaders)     # loaders: Munch(src, ref)  -> core/sampling.py
    solver.evaluate()          # FID and LPIPS             -> metrics/eval.py

Checkpoint files: core/checkpoint.py (their checksums: core/machinery/integrity.py; the training set a resume must share:
core/machinery/run_identity.py); logging and the stop signals: core/machinery/train_log.py; --compile: core/machinery/compile.py.
"""
import contextlib

import torch
import torch.nn as nn
from munch import Munch
from tqdm import tqdm

from core import utils
from core.checkpoint import RunCheckpoint, remove_leftover_temp_files, resolve_resume_step
from core.machinery.compile import compile_nets, cudagraphs_enabled, explain_compile_errors
from core.data_loader import InputFetcher
from core.machinery.distributed import (all_reduce_mean, all_reduce_mean_grads, barrier, get_world_size, is_main_process,
                              resolve_device)
from core.losses import (adv_loss, compute_d_loss, compute_g_loss, d_logits_and_r1,  # noqa: F401 (public surface)
                         lambda_ds_at, moving_average, r1_reg)
from core.machinery.micro_batch import resolve_micro_batch, split_batch, weighted_terms
from core.model import build_model, masks_of
from core.machinery.train_log import LOSS_NAMES, NonFiniteGuard, NonFiniteLossError, TrainLogger, stop_signals  # noqa: F401


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
                betas=[args.beta1, args.beta2], weight_decay=args.weight_decay) for net in self.nets if net != 'fan'})
        self.checkpoint = RunCheckpoint(args.checkpoint_dir, self.nets, self.nets_ema, self.optims,
                                        trust_pickle=args.trust_pickle)
        self.to(self.device)
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
        weights = Munch(w_hpf=args.w_hpf, lambda_reg=args.lambda_reg, lambda_sty=args.lambda_sty,
                        lambda_cyc=args.lambda_cyc, lambda_ds=lambda_ds_at(step, args.lambda_ds, args.ds_iter))
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
        fetcher = InputFetcher(loaders.src, loaders.ref, args.latent_dim, 'train', self.device)
        inputs_val = next(InputFetcher(loaders.val, None, args.latent_dim, 'val', self.device)) if main else None
        logger = TrainLogger(args, start) if main else None
        guard, step, last_saved, terms = NonFiniteGuard(self.device), start, None, None
        print(f'Start training from step {start} (global batch {args.batch_size}, {get_world_size()} process(es), '
              f'device {self.device})...')
        with stop_signals() as stop, tqdm(range(start, args.total_iters), initial=start, total=args.total_iters,
                                          disable=not main, dynamic_ncols=True, desc='train') as progress:
            for step in (i + 1 for i in progress):
                with explain_compile_errors(args, step):
                    terms = self.train_step(next(fetcher), step - 1)
                is_log, is_save = every(args.print_every, step), every(args.save_every, step)
                if is_log or is_save or step == args.total_iters:  # the same steps on every rank
                    terms = all_reduce_mean(terms)  # the global batch's losses (a no-op in one process)
                guard.update(terms)
                if is_log or is_save or stop.requested or step == args.total_iters:
                    guard.check(terms, step)  # the loop's only host sync, on these steps
                if main and is_log:
                    logger.log(step, terms.tolist(), lambda_ds_at(step, args.lambda_ds, args.ds_iter))
                if main and every(args.sample_every, step):
                    utils.debug_image(self.nets_ema, args, inputs=inputs_val, step=step)
                    logger.images(step)
                if is_save:
                    last_saved = self._save(step)
                if every(args.eval_every, step):
                    self.evaluate_nets(step)
                if stop.requested:
                    print(f'\n{stop.signame}: saving a checkpoint of step {step} before exiting...')
                    break
        if last_saved != step and step > start:
            self._save(step)
        if logger:
            logger.close()
        if stop.requested:
            barrier()
            raise KeyboardInterrupt(f'stopped by {stop.signame} at step {step}; resume with --resume_iter {step}')
        return terms

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
