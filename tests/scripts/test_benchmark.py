"""scripts/benchmark.py on a CPU with tiny networks: the JSON it prints, both loaders, --compare (eager and bf16
autocast: torch.compile on a CPU takes minutes, so it is left to the GPU run), a failing mode, the time budget,
random FAN weights for w_hpf > 0, and flag pass-through.

The two command lines run as subprocesses started together (the imports dominate on a small machine).
"""
import json
import os
import subprocess
import sys
import time

import pytest
import torch
from munch import Munch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, 'scripts', 'benchmark.py')
TINY = ['--img_size', '32', '--base_dim', '8', '--max_conv_dim', '16', '--hidden_dim', '16', '--w_hpf', '0',
        '--batch_size', '2', '--device', 'cpu', '--threads', '1']
RUNS = {
    'synthetic': TINY + ['--iters', '3', '--warmup', '1', '--loader', 'synthetic'],
    # the real loaders and --compare in one run (each start pays for importing torch)
    'real_compare': TINY + ['--iters', '2', '--warmup', '1', '--loader', 'real', '--make_images', '4',
                            '--image_res', '64', '--num_workers', '1', '--compare',
                            '--modes', 'eager,amp,reference_work'],
}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Starts the runs at once; returns name -> (returncode, stdout JSON, --json file JSON, stderr)."""
    tmp = tmp_path_factory.mktemp('bench')
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    procs = {}
    for name, argv in RUNS.items():
        out = tmp / f'{name}.json'
        procs[name] = (subprocess.Popen([sys.executable, SCRIPT, *argv, '--json', str(out)], cwd=ROOT, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out)
    results = {}
    for name, (p, out) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, f'{name}: exit {p.returncode}\n{stderr[-3000:]}'
        printed = json.loads(stdout)  # stdout holds exactly one JSON object
        results[name] = (p.returncode, printed, json.loads(out.read_text()), stderr)
    return results


def _check_timing(r, iters):
    assert r['status'] == 'ok'
    assert r['iters_timed'] == iters and not r['truncated_by_budget']
    assert r['s_per_iter'] > 0 and r['s_per_iter_median'] > 0 and r['s_per_iter_mean'] == r['s_per_iter']
    assert r['it_per_s'] == pytest.approx(1 / r['s_per_iter'])
    assert r['tflops'] > 0
    assert r['loss_terms_finite'] is True
    assert r['peak_mem_gib'] is None  # CPU


def test_synthetic(runs):
    _, d, full, stderr = runs['synthetic']
    _check_timing(d, 3)
    assert d['complete'] is True and d['mode'] == 'eager'
    assert d['env']['device'] == 'cpu' and d['env']['torch'] == torch.__version__ and d['env']['date']
    assert d['flops_per_iter'] > 0 and 'aten.convolution' in d['flops_by_op']
    assert d['tflops'] == pytest.approx(d['flops_per_iter'] / d['s_per_iter'] / 1e12)
    assert d['config']['img_size'] == 32 and d['config']['base_dim'] == 8 and d['config']['w_hpf'] == 0
    assert d['flags']['loader'] == 'synthetic' and d['flags']['iters'] == 3
    assert d['params']['generator'] > 0
    assert set(d['tf32_at_start']) >= {'cuda_matmul_allow_tf32', 'cudnn_allow_tf32'}
    assert 'per_iter_s' not in d['results'][0]          # the per-iteration list is in the file only
    assert len(full['results'][0]['per_iter_s']) == 3
    assert 'StarGAN v2 train_step' in stderr              # the human-readable table goes to stderr


def test_real_loader_and_compare(runs):
    _, d, full, stderr = runs['real_compare']
    assert d['flags']['loader'] == 'real' and d['flags']['modes'] == ['eager', 'bf16', 'reference_work']
    assert d['images']['images_per_domain'] == 4 and d['images']['image_res'] == 64
    assert d['loader']['domains'] == ['domain0', 'domain1'] and d['loader']['images'] == 8
    assert not os.path.exists(d['images']['folder'])      # the temp folder is removed
    assert [r['mode'] for r in d['results']] == ['eager', 'bf16', 'reference_work']
    for r in d['results']:
        _check_timing(r, 2)
        assert r['first_iter_s'] > 0
    assert d['results'][1]['amp'] == 'bf16' and d['results'][0]['amp'] == 'none'
    assert d['flops_per_iter'] > 0 and d['results'][1]['tflops'] > 0
    num = d['numerics']
    assert 'eager' not in num and 'baseline' in num
    rep = num['eager_repeat']  # eager twice from the same weights and batch: identical on a CPU
    assert rep['initial_weights_identical'] and rep['update_rel_l2'] == 0 and rep['loss_max_abs_diff'] == 0
    bf = num['bf16']
    assert bf['initial_weights_identical'] and bf['loss_terms_finite']
    assert 0 < bf['update_rel_l2'] < 10 and 0 < bf['grad_rel_l2'] < 10 and 0 < bf['param_max_rel_diff'] < 1
    assert 0 < bf['loss_first_step_max_rel_diff'] < 1
    assert set(bf['per_network']) == {'generator', 'mapping_network', 'style_encoder', 'discriminator'}
    assert 'eager_no_tf32' not in num  # CUDA only
    # the reference's discarded weight gradients: more work, the same numbers
    assert d['results'][2]['skip_unused_grads'] is False and d['results'][0]['skip_unused_grads'] is True
    ref = num['reference_work']
    assert ref['loss_max_abs_diff'] == 0 and ref['update_rel_l2'] == 0 and ref['grad_rel_l2'] == 0
    assert d['results'][2]['flops_per_iter'] == d['flops_per_iter_reference_work'] > 1.05 * d['flops_per_iter']
    assert full['complete'] is True and len(full['results'][1]['per_iter_s']) == 2
    assert 'eager_repeat' in stderr and 'bf16' in stderr   # the side-by-side table


# ------------------------------------------------------------------------------------------------------ in process

@pytest.fixture(scope='module')
def bench():
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import benchmark
    n = torch.get_num_threads()
    yield benchmark
    torch.set_num_threads(n)


def test_failing_mode_is_reported(bench, tmp_path, monkeypatch):
    real_run_mode = bench.run_mode

    def run_mode(name, *a, **k):
        if name == 'bf16':
            raise RuntimeError('boom: a compiler error')
        return real_run_mode(name, *a, **k)
    monkeypatch.setattr(bench, 'run_mode', run_mode)
    out = tmp_path / 'r.json'
    code = bench.main(TINY + ['--iters', '1', '--warmup', '0', '--compare', '--modes', 'eager,bf16', '--no_numerics',
                              '--json', str(out)], redirect_stdout=False, start_time=time.perf_counter())
    d = json.loads(out.read_text())
    assert code == 0
    assert [r['status'] for r in d['results']] == ['ok', 'error']
    assert 'boom' in d['results'][1]['error'] and d['numerics'] is None


def test_time_budget(bench, tmp_path):
    out = tmp_path / 'r.json'
    # budget already spent, but modes may start: warm-up cut to 1 iteration, the timed loop stops after 3
    code = bench.main(TINY + ['--iters', '50', '--warmup', '5', '--time_budget_s', '0', '--min_mode_s=-1e9',
                              '--json', str(out)], redirect_stdout=False, start_time=time.perf_counter())
    d = json.loads(out.read_text())
    assert code == 0 and d['status'] == 'ok'
    assert d['iters_timed'] == 3 and d['truncated_by_budget'] is True and d['warmup_iters'] == 1
    # no time left for any mode: all skipped, and said so
    code = bench.main(TINY + ['--compare', '--modes', 'eager,bf16', '--time_budget_s', '0', '--json', str(out)],
                      redirect_stdout=False, start_time=time.perf_counter())
    d = json.loads(out.read_text())
    assert code == 1
    assert [r['status'] for r in d['results']] == ['skipped', 'skipped']
    assert 'time_budget_s' in d['results'][0]['reason'] and len(d['notes']) == 2


def test_random_fan_weights(bench, tmp_path):
    from core.wing import FAN
    notes = []
    args = Munch(w_hpf=1, wing_path=str(tmp_path / 'missing' / 'wing.ckpt'), seed=0)
    msg = bench.ensure_wing(args, str(tmp_path), notes)
    assert 'randomly initialised FAN' in msg and notes == [msg]
    assert os.path.isfile(args.wing_path) and args.wing_path.startswith(str(tmp_path))
    FAN(fname_pretrained=args.wing_path)  # loads
    assert bench.ensure_wing(Munch(w_hpf=0, wing_path='x', seed=0), str(tmp_path), notes) is None


def test_flags_pass_through(bench):
    bargs, args = bench.parse_all(['--preset', 'afhq', '--iters', '7', '--amp', 'bf16', '--modes', 'eager,amp'])
    assert bargs.iters == 7 and bargs.modes == ['eager', 'bf16']
    assert args.mode == 'train' and args.num_domains == 3 and args.w_hpf == 0 and args.lambda_ds == 2
    assert args.amp == 'bf16' and args.img_size == 256 and args.batch_size == 8
    bargs, args = bench.parse_all(['--preset', 'celeba_hq', '--w_hpf', '0', '--compile'])
    assert args.w_hpf == 0 and args.compile and args.num_domains == 2
    with pytest.raises(SystemExit):
        bench.parse_all(['--modes', 'eager,turbo'])


def test_flop_count_fallback(bench, monkeypatch):
    """The bare-dispatch fallback gives FlopCounterMode's numbers (it is used if that route breaks)."""
    import torch.utils.flop_counter as fc
    _, args = bench.parse_all(TINY)
    device = torch.device('cpu')
    inputs = bench.synthetic_inputs(args, device, 0)
    total, by_op, params = bench.count_flops(args, device, inputs)
    assert total > 0 and params['discriminator'] > 0

    class Broken(fc.FlopCounterMode):
        def __enter__(self):
            raise RuntimeError('broken on this version')
    monkeypatch.setattr(fc, 'FlopCounterMode', Broken)
    total2, by_op2, _ = bench.count_flops(args, device, inputs)
    assert total2 == total and by_op2 == by_op


def test_compile_mode_plumbing(bench, tmp_path, monkeypatch):
    """The compile mode's path (compile_nets, dynamo stats, numerics vs eager) with torch.compile stubbed out
    (tests/test_solver.py captures the real graphs with the aot_eager backend)."""
    calls = []

    def fake_compile(fn, **kwargs):  # nn.Module.compile passes the bound _call_impl
        calls.append(type(getattr(fn, '__self__', fn)).__name__)
        return fn
    monkeypatch.setattr(torch, 'compile', fake_compile)
    out = tmp_path / 'r.json'
    code = bench.main(TINY + ['--iters', '1', '--warmup', '1', '--compare', '--modes', 'eager,compile',
                              '--json', str(out)], redirect_stdout=False, start_time=time.perf_counter())
    d = json.loads(out.read_text())
    assert code == 0 and [r['status'] for r in d['results']] == ['ok', 'ok']
    # the four networks (no FAN with w_hpf 0) and the discriminator's real branch with R1
    assert sorted(calls) == ['Discriminator', 'Generator', 'MappingNetwork', 'StyleEncoder', 'function']
    r = d['results'][1]
    assert r['compile'] is True and 'dynamo' in r
    assert d['numerics']['compile']['update_rel_l2'] == 0  # the stub changes nothing
