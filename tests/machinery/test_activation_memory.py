"""core/machinery/memory.py (re-exported by scripts/activation_memory.py): the bytes autograd saves for backward, per phase and
the most alive at once, against hand counts; the counted memory of a training iteration against the networks' sizes
and per micro-batch size; the script's table; and scripts/op_breakdown.py's per-image figures."""
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, 'scripts'))

from activation_memory import SavedTensorCounter  # noqa: E402


def test_saved_bytes_by_hand():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    x = torch.randn(8, 16)
    with SavedTensorCounter() as counter:
        net(x).sum().backward()      # saves x (first Linear) and the ReLU output (ReLU and second Linear: once)
        (net(x * 2) ** 2).sum().backward()  # also x * 2 instead of x, and the output for the square
    one = 4 * (8 * 16 + 8 * 32)
    assert counter.phases == [one, one + 4 * 8 * 4]
    assert counter.peak == one + 4 * 8 * 4
    assert torch.Tensor.backward.__name__ == 'backward' and 'counter' not in str(torch.Tensor.backward)
    assert counter.live_peaks == counter.phases  # nothing was dropped before its backward


def test_live_peak_of_a_graph_dropped_before_the_backward():
    """An output detached from its graph (the reference's x_fake2) frees the graph's saved tensors at once: counted
    in the phase's sum, not in the most alive at once (beyond the moment it existed)."""
    w = torch.nn.Parameter(torch.randn(16, 16))
    x = torch.randn(8, 16)
    with SavedTensorCounter() as counter:
        kept = torch.tanh(x @ w)                 # saves x and the tanh output: 2 x 512 bytes
        dropped = torch.tanh((x + 1) @ w)        # also x + 1 and its tanh output, alive until the detach below
        dropped = dropped.detach()
        (kept * 3).sum().backward()
    assert counter.phases == [4 * 4 * 8 * 16]
    assert counter.live_peaks == [4 * 4 * 8 * 16]  # the peak was while both graphs were alive
    with SavedTensorCounter() as counter:
        torch.tanh((x + 1) @ w).detach()          # built and dropped first
        (torch.tanh(x @ w) * 3).sum().backward()
    assert counter.phases == [4 * 4 * 8 * 16] and counter.live_peaks == [2 * 4 * 8 * 16]


def test_counted_training_memory():
    """The state is the networks' bytes; activations grow with the chunk, gradients and state do not; the two D
    phases and the two G phases keep the gradients they compute (D; G, F, E; G)."""
    from conftest import tiny_args
    from core.machinery.memory import count_training_memory
    from core.solver import Solver
    from core.model import build_model
    args = tiny_args(batch_size=8)
    nets, _ = build_model(args)
    size = {k: sum(p.numel() for p in net.parameters()) * 4 for k, net in nets.items()}
    counts = {n: count_training_memory(args, n, 8, solver_cls=Solver) for n in (1, 2, 4)}
    c = counts[2]
    assert c.state.weights == sum(size.values()) + sum(b.numel() * 4 for net in nets.values() for b in net.buffers())
    assert c.state.adam == 2 * sum(size.values())
    assert [p.grads for p in c.phases] == [size['discriminator'], size['discriminator'],
                                           size['generator'] + size['mapping_network'] + size['style_encoder'],
                                           size['generator']]
    assert c.inputs == 8 * 3 * 3 * 32 * 32 * 4
    for p1, p2, p4 in zip(counts[1].phases, counts[2].phases, counts[4].phases):
        assert 0 < p1.activations < p2.activations < p4.activations <= 4 * p1.activations
    assert counts[1].total < counts[2].total < counts[4].total
    largest = max(p.activations + p.grads for p in c.phases)
    assert c.total == c.state.weights + c.state.ema + c.state.fan + c.state.adam + c.inputs + largest


def test_the_script_counts_each_micro_batch(tmp_path, capsys):
    import activation_memory
    tiny = ['--img_size', '32', '--base_dim', '8', '--max_conv_dim', '16', '--hidden_dim', '16', '--w_hpf', '0',
            '--batch_size', '4', '--device', 'cpu', '--micro_batches', '1,4', '--json', str(tmp_path / 'm.json')]
    assert activation_memory.main(tiny) == 0
    d = json.loads((tmp_path / 'm.json').read_text())
    assert [r['micro_batch'] for r in d['rows']] == [1, 4] and d['rows'][0]['batch'] == 4
    assert d['rows'][0]['counted_gib'] < d['rows'][1]['counted_gib']
    assert d['rows'][1]['fits_gb'] == [8, 12, 16, 24]  # tiny networks fit every card
    assert 'predicted peak = counted x' in capsys.readouterr().err


def test_op_breakdown_reports_per_image_figures(tmp_path, capsys):
    import op_breakdown
    tiny = ['--img_size', '32', '--base_dim', '8', '--max_conv_dim', '16', '--hidden_dim', '16', '--w_hpf', '0',
            '--batch_size', '2', '--device', 'cpu', '--skip', 'unet', '--json', str(tmp_path / 'ops.json')]
    assert op_breakdown.main(tiny) == 0
    d = json.loads((tmp_path / 'ops.json').read_text())
    assert d['config']['skip'] == 'unet' and len(d['activations']['saved_bytes_per_phase']) == 4
    assert d['per_image']['flops'] == d['total']['flops'] / 2
    assert d['per_image']['activation_bytes'] == max(d['activations']['saved_bytes_per_phase']) / 2 > 0
    assert 'per image:' in capsys.readouterr().err


def test_fake_mode_counts_what_the_real_iteration_counts(tmp_path):
    """--fake (no arithmetic) gives the FLOPs and saved bytes of the real iteration."""
    import op_breakdown
    tiny = ['--img_size', '32', '--base_dim', '8', '--max_conv_dim', '16', '--hidden_dim', '16', '--w_hpf', '0',
            '--batch_size', '2', '--device', 'cpu', '--skip', 'unet']
    reports = {}
    for name, extra in (('real', []), ('fake', ['--fake'])):
        assert op_breakdown.main(tiny + extra + ['--json', str(tmp_path / f'{name}.json')]) == 0
        reports[name] = json.loads((tmp_path / f'{name}.json').read_text())
    real, fake = reports['real'], reports['fake']
    assert fake['total']['flops'] == real['total']['flops'] > 0
    assert fake['activations'] == real['activations']
    for kind in ('conv forward', 'conv backward', 'activation', 'instance norm', 'pool/upsample', 'matmul'):
        assert fake['by_kind'][kind] == real['by_kind'][kind], kind
