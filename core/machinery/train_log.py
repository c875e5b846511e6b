"""What a training run reports while it runs, and how it is told to stop.

    logger = TrainLogger(args, start_step)     # the reference's log line, train_log.jsonl, TensorBoard if installed,
                                               # Weights & Biases with --wandb
    values = logger.log(step, terms.tolist(), lambda_ds); logger.scalars(step, values); logger.wandb_scalars(...)
    logger.plot(); logger.tb_images(step); logger.wandb_images(step)    # at a sample step
    with stop_signals() as stop:               # SIGINT/SIGTERM set stop.requested; the loop saves and exits
        ...
    guard = NonFiniteGuard(device)             # accumulates on the device; raises on the steps that sync anyway
"""
import contextlib
import datetime
import json
import math
import os
import signal
import time

import numpy as np
import torch
from munch import Munch
from tqdm import tqdm

LOSS_NAMES = ['D/latent_real', 'D/latent_fake', 'D/latent_reg', 'D/ref_real', 'D/ref_fake', 'D/ref_reg',
              'G/latent_adv', 'G/latent_sty', 'G/latent_ds', 'G/latent_cyc',
              'G/ref_adv', 'G/ref_sty', 'G/ref_ds', 'G/ref_cyc']


class NonFiniteLossError(RuntimeError):
    pass


class NonFiniteGuard:
    """Remembers on the device whether any loss term went non-finite (no host sync per iteration); check() reads it
    back, on the steps that read the terms anyway, and raises naming the terms and the step."""

    def __init__(self, device):
        self.flag = torch.zeros((), dtype=torch.bool, device=device)

    def update(self, terms):
        self.flag |= ~torch.isfinite(terms).all()

    def check(self, terms, step):
        if not bool(self.flag):
            return
        bad = [n for n, v in zip(LOSS_NAMES, terms.tolist()) if not math.isfinite(v)]
        where = f'at step {step}' if bad else f'between the last check and step {step}'
        raise NonFiniteLossError(
            f'Non-finite loss {where}: {", ".join(bad) or "(a term went non-finite and the latest values are finite)"}.'
            f' Training stopped; the latest checkpoint on disk is from before this. Lower --lr, or check the data.')


@contextlib.contextmanager
def stop_signals(signals=(signal.SIGINT, signal.SIGTERM)):
    """Inside the block SIGINT/SIGTERM set `stop.requested` (and `stop.signame`) instead of raising, so that the loop
    can finish the iteration and save; a second signal raises KeyboardInterrupt at once. Handlers are restored after."""
    stop = Munch(requested=False, signame=None)

    def handler(signum, frame):
        if stop.requested:
            raise KeyboardInterrupt
        stop.requested, stop.signame = True, signal.Signals(signum).name

    old = {}
    for sig in signals:
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: signals stay as they are
            pass
    try:
        yield stop
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


class TrainLogger:
    """The reference's log line every print_every, the same numbers as JSON lines in checkpoint_dir/train_log.jsonl,
    TensorBoard scalars/images when the tensorboard package is installed, and with --wandb a Weights & Biases run
    (core/machinery/wandb_log.py)."""

    def __init__(self, args, start):
        self.args = args
        self.start_time = time.time()
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        self.jsonl = open(os.path.join(args.checkpoint_dir, 'train_log.jsonl'), 'a')
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(os.path.join(args.checkpoint_dir, 'tensorboard'))
        except Exception:  # tensorboard is optional
            pass
        self.wandb = None
        if args.get('wandb'):
            from core.machinery.wandb_log import WandbRun
            self.wandb = WandbRun(args, start)

    def log(self, step, values, lambda_ds):
        """The log line and its JSON record; returns the values by name (for scalars)."""
        elapsed = str(datetime.timedelta(seconds=time.time() - self.start_time))[:-7]
        all_losses = dict(zip(LOSS_NAMES, values))
        all_losses['G/lambda_ds'] = lambda_ds
        line = 'Elapsed time [%s], Iteration [%i/%i], ' % (elapsed, step, self.args.total_iters)
        line += ' '.join(['%s: [%.4f]' % (k, v) for k, v in all_losses.items()])
        tqdm.write(line)
        self.jsonl.write(json.dumps(dict(step=step, elapsed_s=round(time.time() - self.start_time, 3),
                                         **all_losses)) + '\n')
        self.jsonl.flush()
        return all_losses

    def scalars(self, step, all_losses):
        """The logged values to TensorBoard, when it is installed."""
        if self.tb is not None:
            for k, v in all_losses.items():
                self.tb.add_scalar(k, v, step)

    def wandb_scalars(self, step, all_losses):
        """The logged values to the wandb run, with --wandb."""
        if self.wandb is not None:
            self.wandb.log(step, all_losses)

    def wandb_images(self, step):
        """At a sample step: the sample grids to the wandb run, with --wandb."""
        if self.wandb is not None:
            self.wandb.images(step, self.args.sample_dir)

    def plot(self):
        """At a sample step: the loss curves so far beside the debug images (sample_dir/losses.png, overwritten), so
        that a run can be watched without TensorBoard."""
        from core.machinery.plots import plot_losses
        self.jsonl.flush()
        plot_losses(self.jsonl.name, os.path.join(self.args.sample_dir, 'losses.png'))

    def tb_images(self, step):
        """At a sample step: the debug images to TensorBoard, when it is installed."""
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
        if self.wandb is not None:
            self.wandb.finish()
