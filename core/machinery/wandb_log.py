"""A training run in Weights & Biases (--wandb PROJECT): what TrainLogger reports, sent to a wandb run.

    require_wandb(args)              # main.py, before any work: one line naming the package when it is missing
    run = WandbRun(args, start)      # rank 0 only (TrainLogger); the run's settings as its config
    run.log(step, losses)            # the 14 loss terms and G/lambda_ds, at each print step
    run.images(step, sample_dir)     # the sample grids of the step, at each sample step
    run.finish()

The wandb run's id is kept beside the checkpoints (checkpoint_dir/wandb_run.json, written atomically): a run resumed
from a checkpoint (--resume_iter) continues the same wandb run. A killed run may have logged steps after its last
checkpoint: online, wandb gives the resumed run the step it has reached (run.starting_step) and the earlier steps are
not sent again (wandb has them, the same numbers: a resume is exact). WANDB_MODE=offline records into
checkpoint_dir/wandb/ (or $WANDB_DIR) with no network; `wandb sync` uploads it later.
"""
import json
import os

RUN_FILE = 'wandb_run.json'
SAMPLE_KINDS = ('cycle_consistency', 'reference', 'latent_psi_0.5', 'latent_psi_0.7', 'latent_psi_1.0')


class WandbError(RuntimeError):
    """--wandb cannot be served: the package is missing or the run cannot start. The message says what to do."""


def require_wandb(args):
    """The wandb module when --wandb is given (None without it); WandbError naming the package when it is missing."""
    if not args.get('wandb'):
        return None
    try:
        import wandb
    except ImportError as e:
        raise WandbError(f'--wandb {args.wandb}: the wandb package is not installed ({e}); `pip install wandb`, or '
                         f'train without --wandb') from e
    return wandb


def _plain(value):
    return value if isinstance(value, (bool, int, float, str, type(None))) else str(value)


def read_run_id(checkpoint_dir):
    """The wandb run id recorded beside the checkpoints, or None."""
    fname = os.path.join(checkpoint_dir, RUN_FILE)
    if not os.path.isfile(fname):
        return None
    with open(fname) as f:
        return json.load(f).get('id')


class WandbRun:
    def __init__(self, args, start):
        from core.checkpoint import atomic_write
        wandb = require_wandb(args)
        self.wandb = wandb
        run_id = read_run_id(args.checkpoint_dir) if start > 0 else None
        resumed = run_id is not None  # a new run: wandb draws the id
        kwargs = dict(project=args.wandb, entity=args.get('wandb_entity'), name=args.get('wandb_name'), id=run_id,
                      resume='allow')
        if not os.environ.get('WANDB_DIR'):
            kwargs['dir'] = args.checkpoint_dir  # wandb/ beside the checkpoints, not in the working directory
        try:
            self.run = wandb.init(**kwargs)
        except Exception as e:  # wandb raises its own kinds (no API key, no network, a bad entity)
            raise WandbError(f'--wandb {args.wandb}: wandb could not start the run ({type(e).__name__}: {e}); '
                             f'`wandb login`, or WANDB_MODE=offline to record locally and `wandb sync` later') from e
        # a resumed run's settings (--total_iters extended, --resume_iter) replace the recorded ones
        self.run.config.update({k: _plain(v) for k, v in args.items()}, allow_val_change=True)
        atomic_write(os.path.join(args.checkpoint_dir, RUN_FILE), lambda f: f.write(json.dumps(dict(
            id=self.run.id, project=args.wandb, entity=args.get('wandb_entity')), indent=2).encode()))
        self.first_step = getattr(self.run, 'starting_step', 0) or 0
        print(f'wandb: run {self.run.id} in project {args.wandb}' + (' (resumed)' if resumed else ''))

    def log(self, step, values):
        if step >= self.first_step:
            self.run.log(dict(values), step=step)

    def images(self, step, sample_dir):
        grids = {}
        for kind in SAMPLE_KINDS:
            fname = os.path.join(sample_dir, '%06d_%s.jpg' % (step, kind))
            if os.path.exists(fname):
                grids[f'samples/{kind}'] = self.wandb.Image(fname, caption=os.path.basename(fname))
        if grids and step >= self.first_step:
            self.run.log(grids, step=step)

    def finish(self):
        self.run.finish()

