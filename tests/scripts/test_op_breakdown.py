"""scripts/op_breakdown.py on a CPU with tiny networks: its FLOPs agree with FlopCounterMode's count of the same
iteration (scripts/benchmark.py), its bytes with a hand count of one convolution, and the roofline floor follows."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ['--img_size', '32', '--base_dim', '8', '--max_conv_dim', '16', '--hidden_dim', '16', '--w_hpf', '0',
        '--batch_size', '2', '--device', 'cpu']


@pytest.fixture(scope='module')
def scripts():
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import benchmark
    import op_breakdown
    return benchmark, op_breakdown


def test_breakdown_matches_the_flop_counter(scripts, tmp_path, capsys):
    benchmark, op_breakdown = scripts
    out = tmp_path / 'ops.json'
    assert op_breakdown.main(TINY + ['--peak_tflops', '1', '--bandwidth_tbs', '0.5', '--json', str(out)]) == 0
    d = json.loads(out.read_text())
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed['total'] == d['total']

    # the same iteration (the second) counted by torch's FlopCounterMode
    bargs, args = benchmark.parse_all(TINY)
    inputs = benchmark.synthetic_inputs(args, torch.device('cpu'), args.seed)
    solver = benchmark.new_solver(args, torch.device('cpu'))
    solver.train_step(inputs, 0)
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    from benchlib.flops import NoModuleTracker
    counter.mod_tracker = NoModuleTracker()
    with counter:
        solver.train_step(inputs, 1)
    assert d['total']['flops'] == counter.get_total_flops() > 0

    kinds = d['by_kind']
    assert kinds['conv forward']['flops'] > 0 and kinds['conv backward']['flops'] > 0
    assert kinds['activation']['bytes'] > 0 and kinds['instance norm']['calls'] > 0
    t = d['total']
    assert t['floor_s'] >= max(t['flops'] / 1e12, t['bytes'] / 0.5e12) * (1 - 1e-9)
    assert t['calls'] == sum(k['calls'] for k in kinds.values())


def test_bytes_of_one_convolution(scripts):
    _, op_breakdown = scripts
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with op_breakdown.OpCounter() as counter:
        torch.nn.functional.conv2d(x, w, padding=1)
    row = counter.rows[('conv forward', 'convolution')]
    assert row['calls'] == 1
    assert row['bytes'] == 4 * (2 * 3 * 8 * 8 + 4 * 3 * 3 * 3 + 2 * 4 * 8 * 8)  # input, weight, output (fp32)
    assert row['flops'] == 2 * (2 * 4 * 8 * 8) * (3 * 3 * 3)
