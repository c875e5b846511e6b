"""Training under torchrun (core/machinery/distributed.py, docs/distributed.md), on CPU with gloo, tiny networks at 32 px.

    PYTHONPATH=. .venv/bin/python -m pytest -q tests/machinery/test_distributed.py

- two processes end with bit-identical networks and optimiser states on both ranks;
- two processes (global batch 4 = 2 x 2) give the checkpoints and logged losses of one process (batch 4);
- a 2-process checkpoint resumes in 1 process onto the same trajectory;
- two processes with --micro_batch 1 (each local batch of 2 in 2 chunks) land on the same networks, with as many
  all-reduces as without chunks (once per optimiser step, not per chunk);
- a rank that dies (kill -9), or hangs (STARGAN_DIST_TIMEOUT_S), ends the whole job with an error instead of
  a hang, leaving only complete checkpoints;
- under torchrun --max-restarts 1 with --resume_iter -1, a job that lost a rank restarts from its latest checkpoint
  and ends with the files of a run never interrupted.

The equality runs train in float64: in float32 the two runs differ by the order of the sums (gradients summed over 4
samples in one kernel, or over 2 then all-reduced), and Adam's first steps, lr * g / (|g| + eps), turn that rounding
into differences of up to lr per step wherever g is rounding noise (e.g. the conv biases that the generator's
instance norms cancel). In float64 the rounding is ~1e-16 and the runs agree to ~1e-10, so that 1e-5 tests the
data split, the gradient averaging and the resume, not the rounding.

Run as a script (which torchrun does), this file is the worker: it patches the Solver as its SG2_TEST_* environment
variables ask, then runs main.py unchanged, so that the project code carries no test hooks.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STEPS = 3
FLAGS = ['--mode', 'train', '--device', 'cpu', '--img_size', '32', '--base_dim', '8', '--max_conv_dim', '16',
         '--hidden_dim', '16', '--style_dim', '16', '--w_hpf', '0', '--num_domains', '2', '--batch_size', '4',
         '--val_batch_size', '4', '--num_workers', '0', '--total_iters', str(STEPS), '--print_every', '1',
         '--sample_every', '0', '--save_every', '1', '--eval_every', '0']
TOL = 1e-5


# ------------------------------------------------------------------------------------------------------ the worker
def _worker():
    import runpy
    import signal

    from munch import Munch

    from core import solver as S
    from core.machinery.distributed import barrier, get_rank

    float64 = os.environ.get('SG2_TEST_FLOAT64') == '1'
    digest_dir = os.environ.get('SG2_TEST_DIGEST_DIR')
    fail = os.environ.get('SG2_TEST_FAIL')  # 'hang', or 'kill' (SIGKILL between two optimiser steps)
    fail_rank = int(os.environ.get('SG2_TEST_FAIL_RANK', '1'))
    fail_iter = int(os.environ.get('SG2_TEST_FAIL_ITER', '2'))
    if os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') != os.environ.get('SG2_TEST_FAIL_ATTEMPT', '0'):
        fail = None  # a restarted job runs through
    slow_rank0_s = float(os.environ.get('SG2_TEST_SLOW_RANK0_S', '0'))
    count_dir = os.environ.get('SG2_TEST_COUNT_DIR')  # where each rank writes how many all-reduces it made
    all_reduces = [0]
    if count_dir:
        import torch.distributed as dist
        all_reduce = dist.all_reduce

        def counted_all_reduce(*a, **k):
            all_reduces[0] += 1
            return all_reduce(*a, **k)
        dist.all_reduce = counted_all_reduce

    init, train_step, train, one_step = S.Solver.__init__, S.Solver.train_step, S.Solver.train, S.Solver._step
    now = Munch(iteration=None, steps=0)

    def patched_init(self, *a, **kw):
        init(self, *a, **kw)
        if float64:
            self.double()  # in place: the optimisers keep their parameters

    def patched_step(self, *a, **kw):
        now.steps += 1
        if fail == 'kill' and now.iteration == fail_iter and now.steps == 2 and get_rank() == fail_rank:
            # after the first optimiser step's all-reduce: the other rank waits in the second's
            print(f'[test] rank {fail_rank}: kill at iteration {fail_iter}', flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return one_step(self, *a, **kw)

    def patched_train_step(self, inputs, step):
        now.iteration, now.steps = step, 0
        if fail == 'hang' and step == fail_iter and get_rank() == fail_rank:
            print(f'[test] rank {fail_rank}: {fail} at iteration {step}', flush=True)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a stuck process, not one that saves and exits
            while True:
                time.sleep(1)
        if float64:
            inputs = Munch({k: v.double() if v.is_floating_point() else v for k, v in inputs.items()})
        return train_step(self, inputs, step)

    def patched_train(self, loaders):
        if slow_rank0_s:  # rank 0 busy alone for longer than the collective timeout, as in an evaluation
            if get_rank() == 0:
                time.sleep(slow_rank0_s)
            barrier()
            print(f'[test] rank {get_rank()}: past the barrier', flush=True)
        out = train(self, loaders)
        if count_dir:
            os.makedirs(count_dir, exist_ok=True)
            with open(os.path.join(count_dir, f'rank{get_rank()}.json'), 'w') as f:
                json.dump(dict(all_reduce=all_reduces[0], micro_batch=self.micro_batch), f)
        if digest_dir:
            states = {f'nets/{k}': v.state_dict() for k, v in self.nets.items()}
            states.update({f'nets_ema/{k}': v.state_dict() for k, v in self.nets_ema.items()})
            states.update({f'optims/{k}': v.state_dict() for k, v in self.optims.items()})
            os.makedirs(digest_dir, exist_ok=True)
            with open(os.path.join(digest_dir, f'rank{get_rank()}.json'), 'w') as f:
                json.dump({k: _digest(v) for k, v in states.items()}, f, indent=1)
        return out

    S.Solver.__init__, S.Solver.train_step, S.Solver.train = patched_init, patched_train_step, patched_train
    S.Solver._step = patched_step
    runpy.run_path(str(REPO / 'main.py'), run_name='__main__')


def _digest(obj):
    """sha256 of the tensors and numbers of a (nested) state_dict, in key order."""
    import torch
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(str(k).encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)
        elif isinstance(o, torch.Tensor):
            h.update(str((o.dtype, tuple(o.shape))).encode())
            h.update(o.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(o).encode())
    walk(obj)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------ helpers
def _env(**extra):
    env = dict(os.environ)
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _cmd(nproc, *flags):
    if nproc == 1:
        return [sys.executable, __file__, *flags]
    return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', str(nproc),
            '--monitor_interval', '0.5', __file__, *flags]


def _dirs(root, name, data):
    return ['--train_img_dir', str(data / 'train'), '--val_img_dir', str(data / 'val'),
            '--checkpoint_dir', str(root / name / 'checkpoints'), '--sample_dir', str(root / name / 'samples'),
            '--eval_dir', str(root / name / 'eval'), '--result_dir', str(root / name / 'results')]


def _start(nproc, flags, log, **env):
    with open(log, 'w') as f:  # the child keeps its own handle
        return subprocess.Popen(_cmd(nproc, *flags), cwd=REPO, env=_env(**env), stdout=f, stderr=subprocess.STDOUT)


def _wait(proc, log, timeout=300):
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f'no exit within {timeout} s:\n{Path(log).read_text()[-4000:]}')
    return rc, Path(log).read_text()


def _max_diff(dir_a, dir_b, step):
    """Largest difference over every tensor of the nets, nets_ema and optims files of one step."""
    import torch
    worst = {}
    for kind in ('nets', 'nets_ema', 'optims'):
        a = torch.load(dir_a / f'{step:06d}_{kind}.ckpt', map_location='cpu', weights_only=False)
        b = torch.load(dir_b / f'{step:06d}_{kind}.ckpt', map_location='cpu', weights_only=False)
        assert a.keys() == b.keys()
        for net in a:
            ta, tb = _tensors(a[net]), _tensors(b[net])
            assert ta.keys() == tb.keys(), (kind, net)
            worst[f'{kind}/{net}'] = max(float((ta[k].double() - tb[k].double()).abs().max()) for k in ta)
    return worst


def _tensors(state, prefix=''):
    import torch
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(_tensors(v, f'{prefix}{k}.'))
        elif isinstance(v, torch.Tensor) and v.is_floating_point():
            out[f'{prefix}{k}'] = v
    return out


def _log(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / 'train_log.jsonl').read_text().splitlines()]


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope='module')
def data(tmp_path_factory):
    from core.demo.data import make_demo_dataset
    root = tmp_path_factory.mktemp('dist_data')
    make_demo_dataset(str(root), n_train=8, n_val=4, size=32)
    return root


@pytest.fixture(scope='module')
def runs(tmp_path_factory, data):
    """Three steps in float64 with 2 processes and with 1 (at the same time: the machine has two cores and the
    launches spend most of their time importing), checkpoints at every step."""
    root = tmp_path_factory.mktemp('dist_runs')
    t0 = time.time()
    p2 = _start(2, FLAGS + _dirs(root, 'two', data), root / 'two.log', SG2_TEST_FLOAT64=1,
                SG2_TEST_DIGEST_DIR=root / 'digests', SG2_TEST_COUNT_DIR=root / 'counts_two')
    p1 = _start(1, FLAGS + _dirs(root, 'one', data), root / 'one.log', SG2_TEST_FLOAT64=1)
    (rc2, out2), (rc1, out1) = _wait(p2, root / 'two.log'), _wait(p1, root / 'one.log')
    assert rc2 == 0, out2[-4000:]
    assert rc1 == 0, out1[-4000:]
    print(f'2-process and 1-process runs: {time.time() - t0:.1f} s')
    return root, out2, out1


# ------------------------------------------------------------------------------------------------------ tests
def test_both_ranks_end_identical(runs):
    root, out2, _ = runs
    assert '(global batch 4, 2 process(es), device cpu)' in out2
    d0 = json.loads((root / 'digests' / 'rank0.json').read_text())
    d1 = json.loads((root / 'digests' / 'rank1.json').read_text())
    assert len(d0) == 11  # 4 nets, 3 EMA nets, 4 optimisers
    assert d0 == d1, [k for k in d0 if d0[k] != d1.get(k)]


def test_two_processes_match_one(runs):
    root, _, _ = runs
    one, two = root / 'one' / 'checkpoints', root / 'two' / 'checkpoints'
    worst = _max_diff(one, two, STEPS)
    print('largest difference, 2 vs 1 process:', worst)
    assert max(worst.values()) < TOL, worst
    # ... while training moved the networks by far more than the tolerance (the comparison can fail)
    import torch
    a = torch.load(one / '000001_nets.ckpt', weights_only=False)['generator']
    b = torch.load(one / f'{STEPS:06d}_nets.ckpt', weights_only=False)['generator']
    assert max(float((a[k] - b[k]).abs().max()) for k in a) > 10 * TOL

    # the logged losses are the global batch's (the mean over ranks), the same as in one process
    log1, log2 = _log(one), _log(two)
    assert [r['step'] for r in log1] == [r['step'] for r in log2] == list(range(1, STEPS + 1))
    for r1, r2 in zip(log1, log2):
        for k, v in r1.items():
            if k.startswith(('D/', 'G/')):
                assert abs(v - r2[k]) < TOL, (r1['step'], k, v, r2[k])


def test_resume_in_another_world_size(runs, data):
    """The 2-process checkpoint of step 2, resumed in 1 process for the last step, lands on the 1-process run."""
    root, _, _ = runs
    resumed = root / 'resumed' / 'checkpoints'
    resumed.mkdir(parents=True)
    for f in (root / 'two' / 'checkpoints').glob('000002_*.ckpt'):
        shutil.copy(f, resumed / f.name)
    log = root / 'resumed.log'
    rc, out = _wait(_start(1, FLAGS + _dirs(root, 'resumed', data) + ['--resume_iter', '2'], log,
                           SG2_TEST_FLOAT64=1), log)
    assert rc == 0, out[-4000:]
    assert 'Start training from step 2' in out
    assert 'step 2 was saved by 2 process(es), this run has 1: the same global batch of 4' in out
    worst = _max_diff(root / 'one' / 'checkpoints', resumed, STEPS)
    print('largest difference, resumed 2 -> 1 process vs 1 process:', worst)
    assert max(worst.values()) < TOL, worst


def test_two_processes_in_chunks_match_one(runs, data):
    """--micro_batch 1 under torchrun: each rank's batch of 2 in chunks of 1, gradients accumulated, then one
    all-reduce per optimiser step: the 1-process whole-batch run's networks, and the unchunked run's all-reduce count
    (6 gradient all-reduces per iteration, one per optimiser step, plus the logged terms' and, on each log step, the
    ranks' agreement on whether a side job failed; and once before training, on whether rank 0's checks passed)."""
    root, _, _ = runs
    log = root / 'chunks.log'
    rc, out = _wait(_start(2, FLAGS + _dirs(root, 'chunks', data) + ['--micro_batch', '1'], log, SG2_TEST_FLOAT64=1,
                           SG2_TEST_COUNT_DIR=root / 'counts_chunks'), log)
    assert rc == 0, out[-4000:]
    assert 'each step in 2 chunks of at most 1 images (batch 2 per process)' in out
    worst = _max_diff(root / 'one' / 'checkpoints', root / 'chunks' / 'checkpoints', STEPS)
    print('largest difference, 2 processes in chunks of 1 vs 1 process:', worst)
    assert max(worst.values()) < TOL, worst
    for rank in (0, 1):
        chunks = json.loads((root / 'counts_chunks' / f'rank{rank}.json').read_text())
        whole = json.loads((root / 'counts_two' / f'rank{rank}.json').read_text())
        assert (chunks['micro_batch'], whole['micro_batch']) == (1, 2)
        assert chunks['all_reduce'] == whole['all_reduce'] == 1 + STEPS * (6 + 1 + 1)  # --print_every 1


def test_a_problem_found_before_training_ends_every_rank(tmp_path, data):
    """Rank 0 checks the folders before the first iteration; a --sample_dir that cannot be written (below a regular
    file) ends both processes before either trains, with the message naming the flag (rank 1 no longer starts
    training and is torn down mid-iteration when rank 0 exits)."""
    (tmp_path / 'a_file').write_text('not a folder')
    flags = FLAGS + _dirs(tmp_path, 'run', data) + ['--sample_dir', str(tmp_path / 'a_file' / 'samples'),
                                                    '--sample_every', '1']
    t0 = time.time()
    rc, out = _wait(_start(2, flags, tmp_path / 'run.log', STARGAN_DIST_TIMEOUT_S=600), tmp_path / 'run.log',
                    timeout=120)
    assert rc != 0
    assert '--sample_dir' in out and 'cannot write there' in out, out[-3000:]
    assert 'Start training from step' not in out
    assert time.time() - t0 < 120


def test_a_lost_rank_ends_the_job(tmp_path, data):
    """Rank 1 is killed (SIGKILL, between two optimiser steps) or hangs (rank 0's all-reduce times out after
    STARGAN_DIST_TIMEOUT_S) in the third iteration (step index 2): the job ends with a non-zero exit status and a
    message saying what happened. The killed job saves at every step: it leaves its complete checkpoints of steps 1
    and 2, nothing else.

    In the hang case rank 0 first works alone for longer than that timeout while rank 1 waits at a barrier (as
    during an evaluation at eval_every): a slow rank 0 is not a lost one, barriers have their own long timeout.
    The two jobs run at the same time (the hang job mostly waits)."""
    from core.machinery import integrity
    flags = FLAGS + ['--total_iters', '50', '--save_every', '0']  # the later flags win
    timeout_s = 6  # also bounds the start-up (gloo's connection set-up): not shorter on a busy machine
    envs = dict(kill=dict(SG2_TEST_FAIL='kill'),  # noticed without a timeout: the peer's connection closes
                hang=dict(SG2_TEST_FAIL='hang', STARGAN_DIST_TIMEOUT_S=timeout_s, SG2_TEST_SLOW_RANK0_S=timeout_s + 2))
    t0 = time.time()
    procs = {fail: _start(2, flags + _dirs(tmp_path, fail, data) + (['--save_every', '1'] if fail == 'kill' else []),
                          tmp_path / f'{fail}.log', **env)
             for fail, env in envs.items()}
    for fail, proc in procs.items():
        rc, out = _wait(proc, tmp_path / f'{fail}.log', timeout=180)
        elapsed = time.time() - t0
        print(f'{fail}: exit status {rc} after {elapsed:.1f} s')
        assert rc != 0, out[-4000:]
        assert f'[test] rank 1: {fail} at iteration 2' in out, out[-4000:]
        assert 'Iteration [50/50]' not in out
        if fail == 'kill':
            assert elapsed < 60, out[-4000:]  # start-up included
            # torchrun's summary names rank 1 as the root cause (rank 0's own message varies with the timing:
            # connection reset or closed by peer, or the SIGTERM torchrun sends it)
            root_cause = out[out.index('Root Cause'):]
            assert 'rank      : 1' in root_cause and 'exitcode  : -9' in root_cause, out[-4000:]
            ckpt = str(tmp_path / fail / 'checkpoints')
            assert sorted(integrity.steps_on_disk(ckpt)) == [1, 2], os.listdir(ckpt)
            assert all(integrity.check_step(ckpt, step) is None for step in (1, 2))
            assert not [f for f in os.listdir(ckpt) if f.startswith('.')]  # no temporary file, no unfinished save
        else:
            assert out.count('past the barrier') == 2, out[-4000:]
            assert f'Timed out waiting {timeout_s * 1000}ms' in out, out[-4000:]


def test_a_restarted_job_continues_from_the_latest_checkpoint(runs, data):
    """torchrun --max-restarts 1 and --resume_iter -1: rank 1 killed in the third iteration of the first attempt, the
    second attempt starts from the checkpoint of step 2 and ends with the files of the run never interrupted, byte
    for byte (the same world size: the same sums in the same order)."""
    from core.machinery import integrity
    root, _, _ = runs
    log = root / 'restarted.log'
    cmd = _cmd(2, *FLAGS, *_dirs(root, 'restarted', data), '--resume_iter', '-1')
    cmd.insert(cmd.index('--nproc_per_node'), '--max-restarts=1')
    t0 = time.time()
    with open(log, 'w') as f:
        # a timeout that ends a restarted attempt whose start hangs (the store's keys of the dead one) within a minute
        proc = subprocess.Popen(cmd, cwd=REPO, env=_env(SG2_TEST_FLOAT64=1, SG2_TEST_FAIL='kill',
                                                        STARGAN_DIST_TIMEOUT_S=60), stdout=f, stderr=subprocess.STDOUT)
    rc, out = _wait(proc, log, timeout=240)
    print(f'killed and restarted: {time.time() - t0:.1f} s')
    assert rc == 0, out[-4000:]
    assert out.count('[test] rank 1: kill at iteration 2') == 1, out[-4000:]
    assert out.count('Start training from step 2 (global batch 4, 2 process(es)') == 2, out[-4000:]  # both ranks
    restarted, two = str(root / 'restarted' / 'checkpoints'), str(root / 'two' / 'checkpoints')
    saved = integrity.read_state(integrity.state_path(two, STEPS))['files']
    assert {f: integrity.file_record(os.path.join(restarted, f)) for f in saved} == saved


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    _worker()
