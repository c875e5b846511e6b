"""scripts/activation_memory.py: the bytes autograd saves for backward, per phase, against a hand count; and
scripts/op_breakdown.py's per-image figures."""
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
