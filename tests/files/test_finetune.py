"""--init_from (core/files/finetune.py): training that starts from a network file, on tiny random networks saved the way
the authors' release is (G, F, E moving averages only) or the way training saves *_nets.ckpt."""
import json
import os

import numpy as np
import pytest
import torch
from munch import Munch
from PIL import Image

from conftest import tiny_args
from core.checkpoint import CheckpointIO
from core.files.ckpt_settings import NetsFileError
from core.files.finetune import init_from
from core.model import build_model
from core.solver import Solver

pytestmark = pytest.mark.usefixtures('one_thread')

GFE = ('generator', 'mapping_network', 'style_encoder')


def save_file(folder, kind='nets_ema', seed=1, **kw):
    """A 2-domain tiny network file: kind 'nets_ema' holds G, F, E (the release's layout), 'nets' also D."""
    torch.manual_seed(seed)
    nets, ema = build_model(tiny_args(**kw))
    src = ema if kind == 'nets_ema' else nets
    names = GFE if kind == 'nets_ema' else GFE + ('discriminator',)
    CheckpointIO(os.path.join(folder, '{:06d}_%s.ckpt' % kind), **{k: src[k] for k in names}).save(100)
    fname = os.path.join(folder, f'000100_{kind}.ckpt')
    return fname, torch.load(fname)


def state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_ema_file_into_three_domains(tmp_path):
    fname, file = save_file(tmp_path)
    torch.manual_seed(0)
    args = tiny_args(num_domains=3, init_from=fname, domains='a,b,c')
    solver = Solver(args, 'cpu')
    before = {k: state(solver.nets[k]) for k in solver.nets}
    lines = init_from(solver.nets, solver.nets_ema, args)
    G, F, E, D = (solver.nets[k] for k in GFE + ('discriminator',))
    for k, v in G.state_dict().items():
        assert torch.equal(v, file['generator'][k]), k
    for net, name in ((F, 'mapping_network'), (E, 'style_encoder')):
        for k, v in net.state_dict().items():
            if k.startswith('unshared.2.'):  # the new domain: its own initialisation, not a copy of the file's heads
                assert torch.equal(v, before[name][k]) and k not in file[name]
                if k.endswith('weight'):  # (biases start at zero in both)
                    assert not any(torch.equal(v, file[name][k.replace('unshared.2.', f'unshared.{i}.')])
                                   for i in (0, 1))
            else:
                assert torch.equal(v, file[name][k]), k
    assert all(torch.equal(v, before['discriminator'][k]) for k, v in D.state_dict().items())  # none in the file
    for k in GFE:  # the EMA copies start equal to the networks
        assert all(torch.equal(a, b) for a, b in zip(solver.nets[k].state_dict().values(),
                                                     solver.nets_ema[k].state_dict().values()))
    assert all(not opt.state for opt in solver.optims.values())  # fresh optimisers
    text = '\n'.join(lines)
    assert 'G, F, E (moving averages; no discriminator), 2 domains; this run has 3 (a, b, c)' in text
    assert 'mapping_network:' in text and 'heads of domain(s) c initialised' in text
    assert 'discriminator: initialised (He), the file has none' in text


def test_nets_file_loads_d_rows_and_fewer_domains_drop_heads(tmp_path):
    fname, file = save_file(tmp_path, kind='nets')
    torch.manual_seed(0)
    nets, ema = build_model(tiny_args(num_domains=3))
    D0 = state(nets.discriminator)
    lines = init_from(nets, ema, tiny_args(num_domains=3, domains='a,b,c'), fname)
    assert 'discriminator: 17 tensors loaded; output rows of domain(s) c initialised (He)' in '\n'.join(lines)
    last = max(int(k.split('.')[1]) for k in D0)
    for k, v in nets.discriminator.state_dict().items():
        if k.startswith(f'main.{last}.'):  # one output row per domain: 0, 1 from the file, 2 initialised
            assert torch.equal(v[:2], file['discriminator'][k]) and torch.equal(v[2:], D0[k][2:])
        else:
            assert torch.equal(v, file['discriminator'][k]), k
    # 2 -> 1 domain: the second head of the file is left out, the rest loads
    nets1, ema1 = build_model(tiny_args(num_domains=1))
    lines = init_from(nets1, ema1, tiny_args(num_domains=1), fname)
    assert torch.equal(nets1.mapping_network.unshared[0][0].weight, file['mapping_network']['unshared.0.0.weight'])
    assert torch.equal(nets1.discriminator.state_dict()[f'main.{last}.weight'],
                       file['discriminator'][f'main.{last}.weight'][:1])
    assert "the file's heads of domain(s) 1 not used" in '\n'.join(lines)
    assert "the file's output rows of domain(s) 1 not used" in '\n'.join(lines)


@pytest.mark.parametrize('flags, message', [
    (dict(img_size=64), r'--img_size 64 \(the file is 32\)'),
    (dict(max_conv_dim=32), r'--max_conv_dim 32 \(the file: 16\)'),
    (dict(hidden_dim=32, style_dim=8), r'--hidden_dim 32 \(the file: 16\); --style_dim 8 \(the file: 16\)'),
    (dict(base_dim=4), r'--base_dim 4 \(the file: 8\)'),
])
def test_impossible_mismatch_names_the_flag(tmp_path, flags, message):
    fname, _ = save_file(tmp_path)
    args = tiny_args(**flags)
    nets, ema = build_model(args)
    with pytest.raises(NetsFileError, match=r'--init_from: .*000100_nets_ema.ckpt cannot be loaded with ' + message):
        init_from(nets, ema, args, fname)


def test_skip_variant_mismatch_names_skip(tmp_path):
    fname, _ = save_file(tmp_path)                      # the reference's generator (--skip hpf)
    args = tiny_args(skip='unet')
    nets, ema = build_model(args)
    with pytest.raises(NetsFileError, match=r'holds a --skip hpf generator and this run builds --skip unet; give --skip hpf'):
        init_from(nets, ema, args, fname)
    fname, _ = save_file(tmp_path / 'u', skip='unet')
    nets, ema = build_model(tiny_args())                # hpf
    with pytest.raises(NetsFileError, match=r'holds a --skip unet generator .* --skip hpf; give --skip unet'):
        init_from(nets, ema, tiny_args(), fname)


def test_high_pass_mismatch_names_w_hpf(tmp_path, random_wing):
    fname, file = save_file(tmp_path, w_hpf=1, wing_path=random_wing, img_size=64)
    args = tiny_args(img_size=64)  # w_hpf 0
    nets, ema = build_model(args)
    with pytest.raises(NetsFileError, match=r'--w_hpf 0 \(the file has the high-pass path: --w_hpf 1\)'):
        init_from(nets, ema, args, fname)
    # the release's generator has no hpf.filter: it still loads, the filter rebuilt from --w_hpf
    del file['generator']['hpf.filter']
    torch.save(file, fname)
    args = tiny_args(img_size=64, w_hpf=1, wing_path=random_wing)
    nets, ema = build_model(args)
    lines = init_from(nets, ema, args, fname)
    assert 'hpf.filter rebuilt from --w_hpf 1' in '\n'.join(lines)
    assert torch.equal(nets.generator.hpf.filter[1, 1], torch.tensor(8.0))


def test_not_a_network_file(tmp_path):
    torch.save({'state_dict': {}}, tmp_path / 'wing.ckpt')
    nets, ema = build_model(tiny_args())
    with pytest.raises(NetsFileError, match=r'--init_from: .*wing.ckpt is not a StarGAN v2 network file'):
        init_from(nets, ema, tiny_args(), str(tmp_path / 'wing.ckpt'))
    with pytest.raises(FileNotFoundError, match='--init_from: network file not found'):
        init_from(nets, ema, tiny_args(), str(tmp_path / 'missing.ckpt'))


def three_domains(root, n=3, size=32):
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for d, colour in (('apple', 0), ('banana', 1), ('cherry', 2)):
            (root / split / d).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                a[..., colour] += 150
                Image.fromarray(a).save(root / split / d / f'{i}.png')
    return root


def test_fine_tuning_starts_from_the_file_trains_and_resumes(tmp_path, monkeypatch):
    """Solver.train at step 0 loads the file (checked with 0 iterations), a run of 2 steps trains from it and stores
    the domain names, and resuming it loads its own checkpoint, not the file again."""
    from main import main
    import core.files.finetune
    fname, file = save_file(tmp_path)
    data = three_domains(tmp_path / 'data')
    args = tiny_args(num_domains=3, init_from=fname, train_img_dir=str(data / 'train'), val_img_dir=str(data / 'val'),
                     checkpoint_dir=str(tmp_path / 'ckpt'), save_every=2, total_iters=0)
    torch.manual_seed(0)
    solver = Solver(args, 'cpu')
    val = [(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1]))]
    solver.train(Munch(src=[], ref=[], val=val))  # no iteration: what step 0 starts from
    assert all(torch.equal(v, file['generator'][k]) for k, v in solver.nets.generator.state_dict().items())
    assert all(torch.equal(v, file['generator'][k]) for k, v in solver.nets_ema.generator.state_dict().items())

    main(Munch(args, total_iters=2))
    saved = torch.load(tmp_path / 'ckpt' / '000002_nets.ckpt')
    assert not torch.equal(saved['generator']['from_rgb.weight'], file['generator']['from_rgb.weight'])  # trained
    assert saved['mapping_network']['unshared.2.6.weight'].shape == file['mapping_network']['unshared.0.6.weight'].shape
    assert json.load(open(tmp_path / 'ckpt' / 'args.json'))['domains'] == 'apple,banana,cherry'

    def no_second_load(*a, **k):
        raise AssertionError('--init_from must not act when resuming')
    monkeypatch.setattr(core.files.finetune, 'init_from', no_second_load)
    main(Munch(args, total_iters=4, resume_iter=2))
    log = [json.loads(line) for line in open(tmp_path / 'ckpt' / 'train_log.jsonl')]
    assert [r['step'] for r in log] == [1, 2, 3, 4]
    assert os.path.exists(tmp_path / 'ckpt' / '000004_nets_ema.ckpt')


def test_settings_read_from_the_reference_layouts(schema):
    """infer_settings on state_dicts with the reference networks' names and shapes (../shared/spec schema: the
    layouts of the released files) gives back the configuration each was built with."""
    from core.files.ckpt_settings import infer_settings
    for config, nets in schema['configs'].items():
        want = dict(kv.split('=') for kv in config.split(','))
        files = {name: {k: torch.empty(shape) for k, shape in net['state_dict'].items()} for name, net in nets.items()}
        files['generator'].pop('hpf.filter', None)  # as in the released CelebA-HQ file
        s = infer_settings(files)
        assert (s.img_size, s.hpf, s.num_domains, s.latent_dim, s.style_dim) == (
            int(want['img_size']), float(want['w_hpf']) > 0, int(want['num_domains']), int(want['latent_dim']),
            int(want['style_dim'])), config
        assert (s.base_dim, s.max_conv_dim, s.hidden_dim) == (0, 512, 512), config
