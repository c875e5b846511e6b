import math

import pytest
import torch
from munch import Munch

from core.model import (Discriminator, Generator, HighPass, MappingNetwork, StyleEncoder, build_model)

NET_CLASSES = dict(generator=Generator, mapping_network=MappingNetwork, style_encoder=StyleEncoder,
                   discriminator=Discriminator)


def build(name, cfg):
    if name == 'generator':
        return Generator(cfg['img_size'], cfg['style_dim'], w_hpf=cfg['w_hpf'])
    if name == 'mapping_network':
        return MappingNetwork(cfg['latent_dim'], cfg['style_dim'], cfg['num_domains'])
    if name == 'style_encoder':
        return StyleEncoder(cfg['img_size'], cfg['style_dim'], cfg['num_domains'])
    return Discriminator(cfg['img_size'], cfg['num_domains'])


def parse_cfg(key):
    return {k: int(v) for k, v in (kv.split('=') for kv in key.split(','))}


def test_state_dicts_equal_the_reference_schema(schema):
    assert len(schema['configs']) >= 5
    for key, nets in schema['configs'].items():
        cfg = parse_cfg(key)
        for name, entry in nets.items():
            net = build(name, cfg)
            sd = net.state_dict()
            ours = [(k, list(v.shape)) for k, v in sd.items()]
            theirs = [(k, v) for k, v in entry['state_dict'].items()]
            assert ours == theirs, f'{key} {name}'
            assert sum(p.numel() for p in net.parameters()) == entry['num_params'], f'{key} {name}'


def test_fan_state_dict_equals_the_schema(schema):
    from core.wing import FAN
    fan = FAN()
    assert [(k, list(v.shape)) for k, v in fan.state_dict().items()] == list(schema['fan']['state_dict'].items())
    assert sum(p.numel() for p in fan.parameters()) == schema['fan']['num_params'] == 6333603


@pytest.mark.parametrize('w_hpf,count', [(0, 33892995), (1, 43467395)])
def test_generator_parameter_count_at_256(w_hpf, count):
    assert sum(p.numel() for p in Generator(256, 64, w_hpf=w_hpf).parameters()) == count


@pytest.mark.parametrize('img_size', [64, 128, 256])
def test_shapes(img_size):
    torch.manual_seed(0)
    N, D = 2, 3
    g, f = Generator(img_size, 64, w_hpf=0), MappingNetwork(16, 64, D)
    e, d = StyleEncoder(img_size, 64, D), Discriminator(img_size, D)
    x = torch.randn(N, 3, img_size, img_size)
    y = torch.tensor([2, 0])
    with torch.no_grad():
        s = f(torch.randn(N, 16), y)
        assert s.shape == (N, 64)
        assert e(x, y).shape == (N, 64)
        x_fake = g(x, s)
        assert x_fake.shape == x.shape
        assert d(x_fake, y).shape == (N,)


def test_mapping_network_picks_each_samples_domain_head():
    torch.manual_seed(0)
    f = MappingNetwork(16, 64, 3)
    z = torch.randn(3, 16)
    y = torch.tensor([2, 0, 1])
    s = f(z, y)
    h = f.shared(z)
    for n in range(3):
        assert torch.allclose(s[n], f.unshared[int(y[n])](h[n:n + 1])[0])


def test_discriminator_picks_each_samples_domain_logit():
    torch.manual_seed(0)
    d = Discriminator(64, 3)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        all_logits = d.main(x).flatten(1)
        assert torch.equal(d(x, torch.tensor([1, 2])), all_logits[[0, 1], [1, 2]])


def test_highpass_values():
    hp = HighPass(w_hpf=2)
    assert torch.equal(hp.filter, torch.tensor([[-1, -1, -1], [-1, 8., -1], [-1, -1, -1]]) / 2)
    x = torch.zeros(1, 2, 5, 5)
    x[0, 0, 2, 2] = 1.0
    x[0, 1] = 3.0  # constant: the filter sums to zero, so only the zero-padded border responds
    out = hp(x)
    # an impulse returns the filter itself (correlation with a symmetric kernel), per channel
    assert torch.allclose(out[0, 0, 1:4, 1:4], hp.filter)
    assert out[0, 0].sum().abs() < 1e-6
    assert torch.allclose(out[0, 1, 1:4, 1:4], torch.zeros(3, 3))
    assert math.isclose(out[0, 1, 0, 0].item(), 3.0 * 5 / 2)  # corner: 8 - 3 neighbours = 5 (times 3, / w_hpf)


def test_generator_uses_masks_only_with_w_hpf():
    torch.manual_seed(0)
    g = Generator(64, 64, w_hpf=1).eval()
    x, s = torch.randn(1, 3, 64, 64), torch.randn(1, 64)
    masks = (torch.ones(1, 1, 256, 256), torch.ones(1, 1, 256, 256))
    with torch.no_grad():
        assert not torch.allclose(g(x, s), g(x, s, masks))
        zero = (torch.zeros(1, 1, 256, 256),) * 2
        assert torch.allclose(g(x, s), g(x, s, zero))


@pytest.mark.parametrize('case', ['net64_afhq', 'net128_celeba'])
def test_networks_match_the_reference_outputs(golden, case):
    fill, G = golden
    c = G[case]['config']
    S, D = c['img_size'], c['num_domains']
    g = fill.fill_(Generator(S, 64, w_hpf=c['w_hpf']), 1).eval()
    f = fill.fill_(MappingNetwork(16, 64, D), 2).eval()
    e = fill.fill_(StyleEncoder(S, 64, D), 3).eval()
    d = fill.fill_(Discriminator(S, D), 4).eval()
    x, z, y = fill.image(7, 'x', 2, S), fill.latent(7, 'z', 2, 16), torch.tensor(c['y'])
    masks = None
    with torch.no_grad():
        if c['w_hpf'] > 0:
            from core.wing import FAN
            fan = fill.fill_(FAN(), 5).eval()
            fan.l0.bias.fill_(-20.0)
            masks = fan.get_heatmap(x)
            for m, gm in zip(masks, G[case]['masks']):
                assert fill.compare(fill.summarize(m), gm) < 1e-4
        s_lat, s_ref = f(z, y), e(x, y)
        out = dict(s_lat=s_lat, s_ref=s_ref, x_fake=g(x, s_lat, masks), x_fake_ref=g(x, s_ref, masks))
        out['d_out'] = d(out['x_fake'], y)
    for k, v in out.items():
        assert fill.compare(fill.summarize(v), G[case][k]) < 1e-4, k


def test_build_model(random_wing):
    args = Munch(img_size=64, style_dim=64, latent_dim=16, num_domains=2, w_hpf=1, wing_path=random_wing)
    nets, nets_ema = build_model(args)
    assert set(nets) == {'generator', 'mapping_network', 'style_encoder', 'discriminator', 'fan'}
    assert set(nets_ema) == {'generator', 'mapping_network', 'style_encoder', 'fan'}
    assert nets.fan is nets_ema.fan and not nets.fan.training
    # EMA copies start equal to the He-initialised networks, but are separate tensors
    for name in ('generator', 'mapping_network', 'style_encoder'):
        for p, q in zip(nets[name].parameters(), nets_ema[name].parameters()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    # He init: zero biases, weight std ~ sqrt(2 / fan_in)
    w = nets.discriminator.main[8].weight
    assert torch.all(nets.discriminator.main[8].bias == 0)
    assert abs(w.std().item() / math.sqrt(2 / w[0].numel()) - 1) < 0.05


def test_narrow_networks_flag():
    args = Munch(img_size=32, style_dim=16, latent_dim=8, num_domains=2, w_hpf=0, base_dim=8, max_conv_dim=16,
                 hidden_dim=16)
    nets, _ = build_model(args)
    assert nets.generator.from_rgb.out_channels == 8
    assert nets.mapping_network.shared[0].out_features == 16
    assert sum(p.numel() for p in nets.generator.parameters()) < 100_000


def test_bad_img_size_is_a_clear_error():
    with pytest.raises(ValueError, match='power of two'):
        Generator(img_size=100)
