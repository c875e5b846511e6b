"""The jobs a training run does beside training (sample grids, the loss plot, the training log, TensorBoard,
evaluation): none of them may cost the training it reports on.

    check_before_training(args)              # the folders writable, the evaluation weights there: before step 1
    jobs = SideJobs()
    jobs.run('the sample grids', step, debug_image, ...)  # an exception is recorded, not raised; later jobs skipped
    if jobs.failure: ... save the step, then raise SideJobError(jobs.message(saved_step))

A failed side job stops the run at the step it failed in: the Solver saves that step's checkpoint (the usual verified
save) and main.py exits with 2 and one line naming the job and the file or the cause; --resume_iter -1 goes on from
there. Errors of the disk or of permissions (ENOSPC, EIO, EACCES, ...) are that one line only; anything else is also
printed with its traceback, as it is likely a bug.
"""
import errno
import os
import sys
import tempfile
import traceback

# an OSError with one of these is the machine's state, not the program's: no traceback
QUIET_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR,
                errno.ENOTDIR, errno.ENOENT, errno.EEXIST, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE}


class SideJobError(RuntimeError):
    """A side job failed (or cannot work): one line naming the job, the flag or the file, and what to do.
    main.py exits with 2."""


def describe(e):
    """'ENOSPC: No space left on device (path)' for an OSError, 'Type: message' otherwise."""
    if isinstance(e, OSError) and e.errno:
        where = f' ({e.filename})' if e.filename else ''
        return f'{errno.errorcode.get(e.errno, "error")}: {e.strerror or e}{where}'
    return f'{type(e).__name__}: {e}'


def quiet(e):
    return isinstance(e, OSError) and e.errno in QUIET_ERRNOS


class SideJobs:
    """Runs side jobs; the first failure is kept (job, step, cause) and every job after it is skipped, so that the
    run reports one cause and stops."""

    def __init__(self):
        self.failure = None

    def run(self, name, step, fn, *a, **k):
        """fn(*a, **k) unless a job failed before; an Exception is recorded (its traceback printed unless the disk
        or the permissions caused it), not raised. KeyboardInterrupt and SystemExit go through."""
        if self.failure is not None:
            return None
        try:
            return fn(*a, **k)
        except Exception as e:
            if not quiet(e):
                traceback.print_exc(file=sys.stderr)
            self.failure = (name, step, describe(e))
            return None

    def message(self, saved):
        name, step, cause = self.failure
        kept = (f'the checkpoint of step {saved} is saved' if saved is not None else
                'no checkpoint was written (no training step since the start)')
        return (f'{name} failed at step {step}: {cause}; training stopped, {kept}: fix the cause and resume with '
                f'--resume_iter -1')


def _writable(folder, flag):
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix='.write_test.'):
            pass
    except OSError as e:
        raise SideJobError(f'{flag} {folder}: cannot write there ({describe(e)}); choose another folder or fix its '
                           f'permissions') from None


def check_before_training(args):
    """What can be known before the first iteration: the folders the run writes to are writable, and the
    evaluation's weights are there when --eval_every is on. Raises SideJobError naming the flag."""
    _writable(args.checkpoint_dir, '--checkpoint_dir')
    if args.sample_every > 0:
        _writable(args.sample_dir, '--sample_dir')
    if args.eval_every > 0:
        _writable(args.eval_dir, '--eval_dir')
        from metrics.weights import ALEXNET, INCEPTION, resolve_weights, WeightsNotFoundError
        try:
            resolve_weights(INCEPTION, args.inception_weights)
            resolve_weights(ALEXNET, args.lpips_alexnet_weights)
        except WeightsNotFoundError as e:
            raise SideJobError(f'--eval_every {args.eval_every}: evaluation needs its weights: {e} (or --eval_every '
                               f'0 to train without evaluation)') from None
