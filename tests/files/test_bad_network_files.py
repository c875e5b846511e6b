"""A file that is not a network file, a truncated one, one of another --skip variant: one message (a DataError,
which main.py prints as one line with exit code 2) naming the file and the flag, and nothing written."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, tiny_args
from core.checkpoint import CheckpointIO
from core.config import parse_args
from core.data_loader import DataError
from core.model import build_model

pytestmark = pytest.mark.usefixtures('one_thread')

GFE = ('generator', 'mapping_network', 'style_encoder')


def save_network(folder, step=10, **kw):
    torch.manual_seed(0)
    _, ema = build_model(tiny_args(**kw))
    CheckpointIO(os.path.join(folder, '{:06d}_nets_ema.ckpt'), **{k: ema[k] for k in GFE}).save(step)
    return os.path.join(folder, f'{step:06d}_nets_ema.ckpt')


def bad_files(folder, random_wing):
    """name -> (file, what the message says)."""
    os.makedirs(folder, exist_ok=True)
    good = save_network(os.path.join(folder, 'good'))
    data = open(good, 'rb').read()
    files = {}

    def write(name, content):
        path = os.path.join(folder, name)
        with open(path, 'wb') as f:
            f.write(content)
        return path
    files['truncated'] = (write('000010_nets_ema.ckpt', data[:len(data) // 2]), 'not a file written by torch.save, '
                                                                                  'or truncated')
    files['text'] = (write('notes_nets_ema.ckpt', b'these are not weights'), 'not a file written by torch.save')
    files['wing'] = (random_wing, 'is not a StarGAN v2 network file')
    files['state_dict only'] = (write('g_nets_ema.ckpt', b''), None)
    torch.save(torch.load(good, weights_only=True)['generator'], files['state_dict only'][0])
    files['state_dict only'] = (files['state_dict only'][0], 'is not a StarGAN v2 network file')
    from safetensors.torch import save
    st = save({'a': torch.ones(1000)})
    files['truncated safetensors'] = (write('cut_nets_ema.safetensors', st[:len(st) // 2]),
                                      'not a safetensors file, or truncated')
    files['other safetensors'] = (write('other_nets_ema.safetensors', st), 'is not a StarGAN v2 network file')
    return files


@pytest.mark.parametrize('entry', ['translate', 'export', 'init_from'])
def test_unusable_files_name_the_file_and_the_flag(tmp_path, random_wing, entry):
    from core.inference.export import export_cli
    from core.files.finetune import init_from
    from core.inference.translate import translate_cli
    for what, (fname, says) in bad_files(tmp_path / 'files', random_wing).items():
        out = tmp_path / 'out'
        if entry == 'init_from':
            nets, ema = build_model(tiny_args())
            call, flag = lambda: init_from(nets, ema, tiny_args(), fname), '--init_from'
        elif entry == 'translate':
            args = parse_args(['--mode', 'translate', '--checkpoint_dir', fname, '--inp', str(tmp_path),
                               '--trg_domain', '0', '--out_dir', str(out)])
            call, flag = lambda: translate_cli(args, torch.device('cpu')), '--checkpoint_dir'
        else:
            args = parse_args(['--mode', 'export', '--checkpoint_dir', fname, '--export_dir', str(out)])
            call, flag = lambda: export_cli(args), '--checkpoint_dir'
        with pytest.raises(DataError) as e:
            call()
        msg = str(e.value)
        assert msg.startswith(f'{flag}: {fname}') or msg.startswith(f'{flag}: cannot read {fname}'), (what, msg)
        assert says in msg and '\n' not in msg, (what, msg)
        assert not out.exists(), what


@pytest.mark.parametrize('mode', ['sample', 'eval'])
def test_sample_and_eval_name_the_file_and_the_flag(tmp_path, mode):
    from core.solver import Solver
    save_network(tmp_path / 'unet', skip='unet')
    solver = Solver(tiny_args(mode=mode, checkpoint_dir=str(tmp_path / 'unet'), resume_iter=10), 'cpu')
    with pytest.raises(DataError, match=r'000010_nets_ema.ckpt: "generator" was saved with --skip unet, but the '
                                        r'network is built with --skip hpf: pass --skip unet'):
        solver.evaluate() if mode == 'eval' else solver.sample(None)
    torch.save({'generator': {}}, tmp_path / 'unet' / '000020_nets_ema.ckpt')  # a file without F and E
    with pytest.raises(DataError, match=r'--resume_iter: .*000020_nets_ema.ckpt has no entry "mapping_network" '
                                        r'\(it has: generator\)'):
        solver.checkpoint.load(20)
    (tmp_path / 'unet' / '000030_nets_ema.ckpt').write_bytes(b'\x80\x02 not really a pickle')
    with pytest.raises(DataError, match=r'--resume_iter: cannot read .*000030_nets_ema.ckpt: not a file written by '
                                        r'torch.save'):
        solver.checkpoint.load(30)


def test_command_line_prints_one_line_and_writes_nothing(tmp_path, random_wing):
    fname, _ = bad_files(tmp_path / 'files', random_wing)['truncated']
    p = subprocess.run([sys.executable, 'main.py', '--mode', 'export', '--checkpoint_dir', fname, '--to', 'onnx',
                        '--export_dir', str(tmp_path / 'out')], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 2, p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f'error: --checkpoint_dir: cannot read {fname}'), p.stderr
    assert not (tmp_path / 'out').exists()
