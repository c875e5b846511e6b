"""--mode export (core/inference/export.py): *_nets_ema.safetensors holds the tensors of the .ckpt bit for bit, with settings
and domain names in its metadata, and is read wherever the .ckpt is (translate, the API, sample/eval, --init_from)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_args
from core.checkpoint import CheckpointIO, RunCheckpoint
from core.config import parse_args
from core.inference.export import export_cli
from core.inference.translate import Translator, resolve_checkpoint, translate_cli
from core.model import build_model

pytest.importorskip('safetensors')
pytestmark = pytest.mark.usefixtures('one_thread')

GFE = ('generator', 'mapping_network', 'style_encoder')


def save_network(folder, step=10, domains='cat,dog', seed=0, **kw):
    torch.manual_seed(seed)
    args = tiny_args(**kw)
    _, ema = build_model(args)
    CheckpointIO(os.path.join(folder, '{:06d}_nets_ema.ckpt'), **{k: ema[k] for k in GFE}).save(step)
    if domains:
        with open(os.path.join(folder, 'args.json'), 'w') as f:
            json.dump(dict(args, domains=domains), f)
    return os.path.join(folder, f'{step:06d}_nets_ema.ckpt'), ema


def export(folder, to='safetensors', *extra):
    args = parse_args(['--mode', 'export', '--checkpoint_dir', str(folder), '--to', to, *extra])
    return export_cli(args)


def read(fname):
    from safetensors import safe_open
    with safe_open(fname, framework='pt') as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def images(n=2, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_round_trip_bit_for_bit_with_settings_and_names(tmp_path):
    fname, _ = save_network(tmp_path / 'ckpt')
    [out] = export(tmp_path / 'ckpt')
    assert out == str(tmp_path / 'ckpt' / '000010_nets_ema.safetensors')
    tensors, meta = read(out)
    raw = torch.load(fname, weights_only=True)
    flat = {f'{net}.{k}': v for net, sd in raw.items() for k, v in sd.items()}
    assert set(tensors) == set(flat)
    for k, v in flat.items():
        assert tensors[k].dtype == v.dtype and torch.equal(tensors[k], v), k
    assert json.loads(meta['domains']) == ['cat', 'dog'] and meta['source'] == '000010_nets_ema.ckpt'
    settings = json.loads(meta['settings'])
    assert (settings['img_size'], settings['num_domains'], settings['style_dim'], settings['w_hpf'],
            settings['skip']) == (32, 2, 16, 0, 'hpf')
    # the same translations from either file; the names come from the file itself (no args.json beside it)
    os.makedirs(tmp_path / 'shipped')
    os.replace(out, tmp_path / 'shipped' / 'model.safetensors')
    a = Translator.from_checkpoint(fname)
    b = Translator.from_checkpoint(str(tmp_path / 'shipped' / 'model.safetensors'))
    assert b.domains == ['cat', 'dog']
    for trg, ref in (('dog', None), ('cat', images(1, seed=5)[0])):
        for x, y in zip(a(images(), trg, ref=ref, num_styles=2), b(images(), trg, ref=ref, num_styles=2)):
            assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(x, y))


def test_translate_cli_finds_the_safetensors_in_a_folder(tmp_path):
    save_network(tmp_path / 'src')
    export(tmp_path / 'src', 'safetensors', '--export_dir', str(tmp_path / 'ckpt'))
    assert resolve_checkpoint(str(tmp_path / 'ckpt')).endswith('000010_nets_ema.safetensors')
    assert resolve_checkpoint(str(tmp_path / 'ckpt'), 10).endswith('000010_nets_ema.safetensors')
    for i, img in enumerate(images()):
        img.save(tmp_path / f'in{i}.png')
    os.makedirs(tmp_path / 'inp')
    for i in range(2):
        os.replace(tmp_path / f'in{i}.png', tmp_path / 'inp' / f'in{i}.png')
    common = ['--mode', 'translate', '--inp', str(tmp_path / 'inp'), '--trg_domain', 'dog']
    for ckpt in ('src', 'ckpt'):
        args = parse_args(common + ['--checkpoint_dir', str(tmp_path / ckpt), '--out_dir', str(tmp_path / f'o_{ckpt}')])
        assert translate_cli(args, torch.device('cpu')) == 0
    for i in range(2):
        assert np.array_equal(np.asarray(Image.open(tmp_path / 'o_src' / f'in{i}_dog_z0.png')),
                              np.asarray(Image.open(tmp_path / 'o_ckpt' / f'in{i}_dog_z0.png')))


def test_sample_eval_and_init_from_read_it(tmp_path):
    from core.files.finetune import init_from
    _, src = save_network(tmp_path / 'src')
    [out] = export(tmp_path / 'src', 'safetensors', '--export_dir', str(tmp_path / 'ckpt'))
    torch.manual_seed(1)
    nets, ema = build_model(tiny_args())
    RunCheckpoint(str(tmp_path / 'ckpt'), nets, ema).load(10)  # sample/eval: no .ckpt there, the .safetensors
    for k in GFE:
        assert all(torch.equal(a, b) for a, b in zip(src[k].state_dict().values(), ema[k].state_dict().values()))
    torch.manual_seed(2)
    nets, ema = build_model(tiny_args())
    lines = init_from(nets, ema, tiny_args(), out)
    assert 'no discriminator' in lines[0]
    for k in GFE:
        assert all(torch.equal(a, b) for a, b in zip(src[k].state_dict().values(), nets[k].state_dict().values()))


def test_skip_variant_and_released_layout(tmp_path, random_wing):
    """The --skip variant (a non-tensor entry of the state) travels in the metadata; a released w_hpf 1 file without
    hpf.filter exports without --wing_path, the filter rebuilt as loading does."""
    fname, _ = save_network(tmp_path / 'unet', skip='unet')
    [out] = export(tmp_path / 'unet')
    tr = Translator.from_checkpoint(out)  # --skip read from the file
    assert tr.args.skip == 'unet' and tr.nets.generator.skip == 'unet'
    assert json.loads(read(out)[1]['extra_state']) == {'generator': {'skip': 'unet'}}
    a = Translator.from_checkpoint(fname)(images(1)[0], 'dog')[0]
    assert np.array_equal(np.asarray(a), np.asarray(tr(images(1)[0], 'dog')[0]))

    fname, _ = save_network(tmp_path / 'hpf', w_hpf=1, wing_path=random_wing)
    raw = torch.load(fname, weights_only=True)
    del raw['generator']['hpf.filter']
    torch.save(raw, fname)
    [out] = export(tmp_path / 'hpf', 'safetensors', '--wing_path', str(tmp_path / 'absent.ckpt'))
    tensors, meta = read(out)
    assert json.loads(meta['settings'])['w_hpf'] == 1
    assert torch.equal(tensors['generator.hpf.filter'], torch.tensor([[-1, -1, -1], [-1, 8., -1], [-1, -1, -1]]))
    assert all(torch.equal(tensors[f'{n}.{k}'], v) for n, sd in raw.items() for k, v in sd.items())
