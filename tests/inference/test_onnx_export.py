"""--mode export --to onnx (core/inference/onnx_export.py): the mapping network, style encoder and generator graphs, run in
onnxruntime on the CPU at other batch sizes than the export's, give PyTorch's outputs to float32 rounding, at 32 px
(--skip unet) and at 256 px with the high-pass path (the FAN masks inside the generator graph)."""
import json
import re

import numpy as np
import pytest
import torch

from conftest import REPO, tiny_args
from core.checkpoint import CheckpointIO
from core.config import parse_args
from core.inference.export import export_cli
from core.inference.translate import Translator, to_pil
from core.model import build_model, masks_of

ort = pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')
pytestmark = pytest.mark.usefixtures('one_thread')

GFE = ('generator', 'mapping_network', 'style_encoder')
# float32 rounding: the runtimes order the sums differently; the outputs are of order 1 (a few units at most)
TOLERANCE = 1e-4


@pytest.mark.parametrize('img_size, flags', [(32, dict(w_hpf=0, skip='unet')),
                                             (256, dict(w_hpf=1, base_dim=4, max_conv_dim=16))],
                         ids=['32px-unet', '256px-fan-masks'])
def test_graphs_match_pytorch(tmp_path, random_wing, img_size, flags):
    torch.manual_seed(0)
    args = tiny_args(img_size=img_size, wing_path=random_wing, **flags)
    _, ema = build_model(args)
    CheckpointIO(str(tmp_path / '{:06d}_nets_ema.ckpt'), **{k: ema[k] for k in GFE}).save(10)
    written = export_cli(parse_args(['--mode', 'export', '--to', 'onnx', '--checkpoint_dir', str(tmp_path),
                                     '--wing_path', random_wing, '--domains', 'cat,dog',
                                     '--export_dir', str(tmp_path / 'onnx')]))
    assert [p.rsplit('/', 1)[1] for p in written] == [f'000010_nets_ema_{g}.onnx' for g in
                                                      ('mapping_network', 'style_encoder', 'generator')]
    graphs = {name: ort.InferenceSession(p, providers=['CPUExecutionProvider'])
              for name, p in zip(('F', 'E', 'G'), written)}
    meta = graphs['G'].get_modelmeta().custom_metadata_map
    assert json.loads(meta['domains']) == ['cat', 'dog'] and json.loads(meta['settings'])['img_size'] == img_size
    nets = Translator.from_checkpoint(str(tmp_path / '000010_nets_ema.ckpt'), wing_path=random_wing).nets
    assert ('fan' in nets) == (flags['w_hpf'] > 0)
    g = torch.Generator().manual_seed(3)
    diffs = {}
    for n in (1, 3):  # the export's example batch is 2: the batch is dynamic
        z = torch.randn(n, args.latent_dim, generator=g)
        y = torch.arange(n) % 2
        x = torch.rand(n, 3, img_size, img_size, generator=g) * 2 - 1
        with torch.no_grad():
            s = nets.mapping_network(z, y)
            want = dict(F=s, E=nets.style_encoder(x, y), G=nets.generator(x, s, masks=masks_of(nets, x)))
        got = dict(F=graphs['F'].run(None, {'z': z.numpy(), 'y': y.numpy()})[0],
                   E=graphs['E'].run(None, {'x_ref': x.numpy(), 'y': y.numpy()})[0],
                   G=graphs['G'].run(None, {'x': x.numpy(), 's': s.numpy()})[0])
        for k in want:
            assert got[k].shape == tuple(want[k].shape)
            diffs[k] = max(diffs.get(k, 0), float(np.abs(got[k] - want[k].numpy()).max()))
    print(f'\nmax abs difference onnxruntime vs PyTorch at {img_size} px: ' +
          ', '.join(f'{k} {v:.2e}' for k, v in diffs.items()))
    assert all(v < TOLERANCE for v in diffs.values()), diffs
    if img_size == 32:
        doc_example(tmp_path, written[0].rsplit('_mapping_network.onnx', 1)[0], nets, args)


def doc_example(tmp_path, stem, nets, args):
    """docs/deploy.md's onnxruntime example, run as written (paths and domain name replaced): its PNG is the
    PyTorch translation of the same image and latent code, to the rounding of one 8-bit level."""
    from PIL import Image
    code = re.search(r'```python\n(.*?)```', (REPO / 'docs' / 'deploy.md').read_text(), re.S).group(1)
    photo = Image.fromarray(np.random.default_rng(4).integers(0, 255, (40, 56, 3), dtype=np.uint8))  # not square
    photo.save(tmp_path / 'me.jpg', quality=95)
    for a, b in (('expr/onnx/100000_nets_ema', stem), ('me.jpg', str(tmp_path / 'me.jpg')),
                 ("'male'", "'dog'"), ('me_male.png', str(tmp_path / 'me_dog.png'))):
        assert a in code
        code = code.replace(a, b)
    exec(compile(code, 'docs/deploy.md', 'exec'), {})
    tr = Translator.from_checkpoint(stem.rsplit('/onnx/', 1)[0] + '/000010_nets_ema.ckpt', domains='cat,dog')
    x = tr.prepare(tmp_path / 'me.jpg')[None]
    z = torch.from_numpy(np.random.default_rng(0).standard_normal((1, args.latent_dim)).astype(np.float32))
    with torch.no_grad():
        want = nets.generator(x, nets.mapping_network(z, torch.tensor([1])))[0].clamp(-1, 1)
    got = np.asarray(Image.open(tmp_path / 'me_dog.png')).astype(int)
    assert np.abs(got - np.asarray(to_pil(want)).astype(int)).max() <= 1
