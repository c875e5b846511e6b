"""--skip {hpf,unet,none}: hpf is the reference's Generator untouched; unet/none keep every shared name and shape,
differ exactly in the encoder-to-decoder connection, record their variant in checkpoints, and every variant trains
one iteration and samples at 32 ... 512 px (narrow widths)."""
import math

import pytest
import torch
from munch import Munch

from conftest import tiny_args
from core.checkpoint import CheckpointIO
from core.model import Generator, SkipVariantGenerator, UnitMasks, build_model, masks_of


def count(net):
    return sum(p.numel() for p in net.parameters())


def variant(skip, img_size=64, w_hpf=0, **kw):
    if skip == 'hpf':
        return Generator(img_size, 64, w_hpf=w_hpf, **kw)
    return SkipVariantGenerator(img_size, 64, w_hpf=w_hpf, skip=skip, **kw)


def test_hpf_is_the_reference_generator(random_wing):
    args = tiny_args(w_hpf=1, wing_path=random_wing)
    assert args.skip == 'hpf' and args.hpf_masks == 'fan'  # the defaults
    nets, nets_ema = build_model(args)
    assert type(nets.generator) is Generator and type(nets_ema.generator) is Generator
    assert '_extra_state' not in nets.generator.state_dict()  # the reference's state dict, no variant record
    assert type(nets.fan).__name__ == 'FAN'


@pytest.mark.parametrize('w_hpf', [0, 1])
@pytest.mark.parametrize('skip', ['unet', 'none'])
def test_variants_keep_every_shared_name_and_shape(skip, w_hpf):
    ref = {k: tuple(v.shape) for k, v in variant('hpf', w_hpf=w_hpf).state_dict().items() if k != 'hpf.filter'}
    sd = variant(skip, w_hpf=w_hpf).state_dict()
    ours = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith('skip_conv.') and k != '_extra_state'}
    assert ours == ref
    assert sd['_extra_state'] == {'skip': skip}
    extra = sorted(k for k in sd if k.startswith('skip_conv.'))
    if skip == 'none':
        assert extra == []
    else:  # one C x C 1x1 conv per resolution the decoder upsamples to: 64, 32 (and 16 with w_hpf's extra level)
        sizes = [64, 32] + ([16] if w_hpf else [])
        assert extra == sorted(f'skip_conv.{r}.weight' for r in sizes)
        for r in sizes:
            c = min(256 * 64 // r, 512)  # dim_in = 2**14 // 64, doubling per halving, capped at 512
            assert tuple(sd[f'skip_conv.{r}.weight'].shape) == (c, c, 1, 1)


@pytest.mark.parametrize('w_hpf,counts', [(0, dict(hpf=33892995, unet=34241155, none=33892995)),
                                          (1, dict(hpf=43467395, unet=44077699, none=43467395))])
def test_parameter_counts_at_256(w_hpf, counts):
    # unet adds 64² + 128² + 256² + 512² (+ 512² at 16 px with w_hpf > 0) 1x1 weights; none has the same parameters
    # as hpf (which differs only by its fixed hpf.filter buffer)
    for skip, n in counts.items():
        assert count(variant(skip, 256, w_hpf)) == n, skip
    assert counts['unet'] - counts['hpf'] == 64 ** 2 + 128 ** 2 + 256 ** 2 + 512 ** 2 + (512 ** 2 if w_hpf else 0)


def test_none_is_hpf_without_its_skips():
    """Same weights: none with masks = hpf without masks (the skips are the only difference), for w_hpf 1."""
    torch.manual_seed(0)
    hpf, none = variant('hpf', w_hpf=1).eval(), variant('none', w_hpf=1).eval()
    none.load_state_dict({**{k: v for k, v in hpf.state_dict().items() if k != 'hpf.filter'},
                          '_extra_state': {'skip': 'none'}})
    x, s = torch.randn(2, 3, 64, 64), torch.randn(2, 64)
    masks = (torch.rand(2, 1, 256, 256), torch.rand(2, 1, 256, 256))
    with torch.no_grad():
        assert torch.equal(none(x, s, masks), hpf(x, s, None))
        assert not torch.allclose(hpf(x, s, masks), hpf(x, s, None))


def test_unet_joins_the_encoder_features_of_every_resolution():
    """A hand-written U-net forward with the same blocks equals the module's; and every join matters."""
    torch.manual_seed(0)
    g = variant('unet', dim_in=8, max_conv_dim=32).eval()
    x, s = torch.randn(2, 3, 64, 64), torch.randn(2, 64)
    with torch.no_grad():
        h = g.from_rgb(x)
        enc = []
        for block in g.encode:
            if block.downsample:
                enc.append(h)
            h = block(h)
        for block in g.decode:
            h = block(h, s)
            if block.upsample:
                e = enc.pop()
                assert e.shape == h.shape
                h = (h + torch.nn.functional.conv2d(e, g.skip_conv[str(h.size(2))].weight)) / math.sqrt(2)
        assert not enc
        expected = g.to_rgb(h)
        out = g(x, s)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        for r, conv in g.skip_conv.items():
            w = conv.weight.clone()
            conv.weight.zero_()
            assert not torch.allclose(g(x, s), out), r
            conv.weight.copy_(w)


@pytest.mark.parametrize('w_hpf', [0, 1])
def test_same_seed_same_start_for_every_shared_parameter(w_hpf):
    """With one seed the three variants start from the same G (shared names), F, E and D: a controlled comparison."""
    base = dict(img_size=32, style_dim=16, latent_dim=8, num_domains=2, base_dim=8, max_conv_dim=16, hidden_dim=16,
                w_hpf=w_hpf, hpf_masks='ones')
    built = {}
    for skip in ('hpf', 'unet', 'none'):
        torch.manual_seed(3)
        built[skip] = build_model(Munch(base, skip=skip))[0]
        built[skip].after = torch.rand(1)  # the global RNG after building: untouched by the U-net's extra init
    for skip in ('unet', 'none'):
        assert torch.equal(built[skip].after, built['hpf'].after)
        for name in ('generator', 'mapping_network', 'style_encoder', 'discriminator'):
            ref = built['hpf'][name].state_dict()
            for k, v in built[skip][name].state_dict().items():
                if k in ref:
                    assert torch.equal(v, ref[k]), (skip, name, k)
    assert built['unet'].generator.skip_conv['32'].weight.std() > 0  # He-initialised, not zero


def test_masks_only_for_hpf_with_w_hpf():
    base = dict(img_size=32, style_dim=16, latent_dim=8, num_domains=2, base_dim=8, max_conv_dim=16, hidden_dim=16,
                wing_path='/nonexistent/wing.ckpt')
    x = torch.rand(2, 3, 32, 32)
    for skip in ('unet', 'none'):  # no FAN and no wing.ckpt needed, even with w_hpf > 0
        nets, nets_ema = build_model(Munch(base, w_hpf=1, skip=skip))
        assert 'fan' not in nets and 'fan' not in nets_ema and masks_of(nets, x) is None
    nets, _ = build_model(Munch(base, w_hpf=0, skip='hpf'))
    assert masks_of(nets, x) is None
    nets, nets_ema = build_model(Munch(base, w_hpf=1, skip='hpf', hpf_masks='ones'))
    assert isinstance(nets.fan, UnitMasks) and nets_ema.fan is nets.fan
    m1, m2 = masks_of(nets, x)
    assert m1.shape == (2, 1, 32, 32) and torch.equal(m1, torch.ones_like(m1)) and torch.equal(m2, m1)
    with pytest.raises(FileNotFoundError, match='wing.ckpt'):
        build_model(Munch(base, w_hpf=1, skip='hpf'))


@pytest.mark.parametrize('saved,loaded,w_hpf', [('unet', 'hpf', 0), ('hpf', 'unet', 0), ('none', 'hpf', 1),
                                                ('hpf', 'none', 1), ('unet', 'none', 1), ('none', 'unet', 0)])
def test_loading_another_variant_names_the_flag(tmp_path, saved, loaded, w_hpf):
    kw = dict(dim_in=8, max_conv_dim=16)
    fname = str(tmp_path / '{:06d}_nets_ema.ckpt')
    CheckpointIO(fname, generator=variant(saved, 32, w_hpf, **kw)).save(1)
    with pytest.raises(RuntimeError, match=f'saved with --skip {saved}.*built with --skip {loaded}.*--skip {saved}'):
        CheckpointIO(fname, generator=variant(loaded, 32, w_hpf, **kw)).load(1)
    target = variant(saved, 32, w_hpf, **kw)
    CheckpointIO(fname, generator=target).load(1)  # the same variant loads


def test_a_reference_file_without_the_filter_still_loads_into_hpf(tmp_path):
    """The released CelebA-HQ generator has no hpf.filter: still hpf, not mistaken for none."""
    g = variant('hpf', 32, 1, dim_in=8, max_conv_dim=16)
    sd = {k: v for k, v in g.state_dict().items() if k != 'hpf.filter'}
    torch.save({'generator': sd}, tmp_path / '000001_nets_ema.ckpt')
    CheckpointIO(str(tmp_path / '{:06d}_nets_ema.ckpt'), generator=variant('hpf', 32, 1, dim_in=8,
                                                                           max_conv_dim=16)).load(1)


def one_iteration_inputs(args, size, B):
    g = torch.Generator().manual_seed(size)
    x = [torch.rand(B, 3, size, size, generator=g) * 2 - 1 for _ in range(3)]
    y = torch.arange(B) % args.num_domains
    return Munch(x_src=x[0], y_src=y, x_ref=x[1], x_ref2=x[2], y_ref=1 - y,
                 z_trg=torch.randn(B, args.latent_dim, generator=g),
                 z_trg2=torch.randn(B, args.latent_dim, generator=g))


def train_one_iteration(args, size, B):
    from core.solver import Solver
    torch.manual_seed(0)
    solver = Solver(args, 'cpu')
    inputs = one_iteration_inputs(args, size, B)
    before = {k: p.clone() for k, p in solver.nets.generator.named_parameters()}
    terms = solver.train_step(inputs, 0)
    assert terms.shape == (14,) and torch.isfinite(terms).all(), size
    moved = {k for k, p in solver.nets.generator.named_parameters() if not torch.equal(before[k], p)}
    assert {'from_rgb.weight', 'to_rgb.2.weight'} <= moved, size
    assert {k for k in before if k.startswith('skip_conv.')} <= moved, size  # the U-net joins learn
    return solver, inputs


@pytest.mark.parametrize('skip,w_hpf', [('hpf', 0), ('hpf', 1), ('unet', 0), ('unet', 1), ('none', 1)])
def test_every_variant_trains_and_samples_at_small_sizes(tmp_path, one_thread, skip, w_hpf):
    """One training iteration and the debug images (every grid) at 32, 64, 128 px. hpf with w_hpf 1 uses unit
    masks here (the FAN runs at 256 px whatever the image size: tests/test_wing.py covers it)."""
    from PIL import Image

    from core import utils
    for size in (32, 64, 128):
        args = tiny_args(img_size=size, skip=skip, w_hpf=w_hpf, hpf_masks='ones', base_dim=4, max_conv_dim=8,
                         num_outs_per_domain=1, sample_dir=str(tmp_path / f'{size}'))
        solver, inputs = train_one_iteration(args, size, 2)
        utils.debug_image(solver.nets_ema, args, inputs, step=1)
        assert Image.open(tmp_path / f'{size}' / '000001_reference.jpg').size == (3 * size, 3 * size)


def test_every_variant_trains_and_samples_at_256_and_512(tmp_path, one_thread):
    """The same at 256 and 512 px, one image per batch and 2 channels (a 512-px iteration is ~8 s on one busy core);
    w_hpf 1 gives every variant its deepest form (the extra level)."""
    from PIL import Image

    from core import utils
    for size in (256, 512):
        for skip in ('hpf', 'unet', 'none'):
            args = tiny_args(img_size=size, skip=skip, w_hpf=1, hpf_masks='ones', base_dim=2, max_conv_dim=4,
                             batch_size=1)
            solver, inputs = train_one_iteration(args, size, 1)
            fname = str(tmp_path / f'{skip}_{size}.jpg')
            utils.translate_using_reference(solver.nets_ema, args, inputs.x_src, inputs.x_ref, inputs.y_ref, fname)
            assert Image.open(fname).size == (2 * size, 2 * size)
