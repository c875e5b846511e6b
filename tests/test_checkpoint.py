import os

import pytest
import torch

from core.checkpoint import CheckpointIO, atomic_torch_save
from core.model import Generator, MappingNetwork


def nets(seed=0, w_hpf=1):
    torch.manual_seed(seed)
    return dict(generator=Generator(32, 16, max_conv_dim=16, w_hpf=w_hpf, dim_in=8),
                mapping_network=MappingNetwork(8, 16, 2, hidden_dim=16))


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_round_trip(tmp_path):
    src, dst = nets(0), nets(1)
    assert not same(src['generator'], dst['generator'])
    CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), **src).save(5)
    assert os.path.exists(tmp_path / '000005_nets.ckpt')
    CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), **dst).load(5)
    assert all(same(src[k], dst[k]) for k in src)
    # the file is the reference's layout: network name -> state_dict
    raw = torch.load(tmp_path / '000005_nets.ckpt')
    assert set(raw) == {'generator', 'mapping_network'} and 'from_rgb.weight' in raw['generator']


def test_optimizer_round_trip(tmp_path):
    net = nets(0)['mapping_network']
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, betas=(0.0, 0.99))
    net(torch.randn(2, 8), torch.tensor([0, 1])).sum().backward()
    opt.step()
    CheckpointIO(str(tmp_path / '{:06d}_optims.ckpt'), mapping_network=opt).save(1)
    opt2 = torch.optim.Adam(nets(1)['mapping_network'].parameters(), lr=1e-4)
    CheckpointIO(str(tmp_path / '{:06d}_optims.ckpt'), mapping_network=opt2).load(1)
    assert opt2.state_dict()['param_groups'][0]['betas'] == (0.0, 0.99)
    assert torch.equal(opt2.state_dict()['state'][0]['exp_avg_sq'], opt.state_dict()['state'][0]['exp_avg_sq'])


def test_loads_data_parallel_prefixes_and_ignores_extra_networks(tmp_path):
    src = nets(0)
    state = {k: {'module.' + n: t for n, t in v.state_dict().items()} for k, v in src.items()}
    state['fan'] = {'module.conv1.conv.weight': torch.zeros(1)}  # the reference also saved the FAN
    torch.save(state, tmp_path / '000010_nets_ema.ckpt')
    dst = nets(1)
    CheckpointIO(str(tmp_path / '{:06d}_nets_ema.ckpt'), **dst).load(10)
    assert all(same(src[k], dst[k]) for k in src)


def test_loads_released_checkpoint_without_hpf_filter(tmp_path):
    src = nets(0, w_hpf=1)
    sd = src['generator'].state_dict()
    del sd['hpf.filter']  # the released CelebA-HQ checkpoint predates this buffer
    torch.save({'generator': sd}, tmp_path / '100000_nets_ema.ckpt')
    g = nets(1, w_hpf=1)['generator']
    g.hpf.filter.zero_()
    CheckpointIO(str(tmp_path / '{:06d}_nets_ema.ckpt'), generator=g).load(100000)
    assert torch.equal(g.hpf.filter, torch.tensor([[-1, -1, -1], [-1, 8., -1], [-1, -1, -1]]))
    assert torch.equal(g.from_rgb.weight, src['generator'].from_rgb.weight)


def test_missing_file_error_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match='000007_nets.ckpt.*--resume_iter'):
        CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), **nets()).load(7)


def test_shape_mismatch_error_names_network_parameter_and_flags(tmp_path):
    CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), **nets()).save(1)
    torch.manual_seed(0)
    other = MappingNetwork(8, 16, 3, hidden_dim=16)  # 3 domains instead of 2
    with pytest.raises(RuntimeError) as e:
        CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), mapping_network=other).load(1)
    msg = str(e.value)
    assert 'mapping_network' in msg and '--num_domains' in msg and 'unshared.2' in msg
    wide = MappingNetwork(8, 32, 2, hidden_dim=16)  # style_dim 32 instead of 16
    with pytest.raises(RuntimeError, match=r'mapping_network.*unshared\.0\.6\.weight.*\(16, 16\) vs model \(32, 16\)'):
        CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), mapping_network=wide).load(1)


def test_missing_network_entry(tmp_path):
    CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), **nets()).save(1)
    with pytest.raises(KeyError, match='discriminator'):
        CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), discriminator=nets()['generator']).load(1)


def test_atomic_save_keeps_previous_file_on_failure(tmp_path):
    fname = tmp_path / 'x.ckpt'
    atomic_torch_save({'a': torch.ones(3)}, str(fname))

    class Boom:
        def __reduce__(self):
            raise RuntimeError('crash in the middle of writing')

    with pytest.raises(RuntimeError, match='crash'):
        atomic_torch_save({'a': torch.zeros(10000), 'b': Boom()}, str(fname))
    assert torch.equal(torch.load(fname)['a'], torch.ones(3))
    assert os.listdir(tmp_path) == ['x.ckpt']  # no temp file left behind


def test_truncated_file_is_a_clear_error(tmp_path):
    CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), **nets()).save(3)
    fname = tmp_path / '000003_nets.ckpt'
    data = fname.read_bytes()
    fname.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match='000003_nets.ckpt'):
        CheckpointIO(str(tmp_path / '{:06d}_nets.ckpt'), **nets()).load(3)
