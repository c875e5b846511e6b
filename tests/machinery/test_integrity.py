"""Checksums of a run's files (core/machinery/integrity.py) and the training set's fingerprint (core/machinery/run_identity.py), in
process on tiny networks. The faults injected into real runs are in tests/machinery/test_faults.py."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from munch import Munch

from conftest import tiny_args
from core.checkpoint import CheckpointIO, RunCheckpoint
from core.machinery import integrity
from core.machinery.run_identity import DataChangedError, check_resume, describe_change, fingerprint
from core.model import MappingNetwork, build_model

pytestmark = pytest.mark.usefixtures('one_thread')
GFE = ('generator', 'mapping_network', 'style_encoder')


def small_run(folder, steps=(2, 4)):
    torch.manual_seed(0)
    net = MappingNetwork(8, 16, 2, hidden_dim=16)
    ema = MappingNetwork(8, 16, 2, hidden_dim=16)
    opt = torch.optim.Adam(net.parameters())
    run = RunCheckpoint(str(folder), dict(mapping_network=net), dict(mapping_network=ema),
                        dict(mapping_network=opt))
    for step in steps:
        run.save(step, lambda_ds=1.0, world_size=1)
    return run


def flip_byte_of_tensor(fname, tensor):
    raw = bytearray(Path(fname).read_bytes())
    blob = tensor.contiguous().numpy().tobytes()
    at = raw.find(blob)
    assert at >= 0
    raw[at + len(blob) // 2] ^= 0x01
    Path(fname).write_bytes(bytes(raw))


def test_the_state_file_records_each_file_and_seals_itself(tmp_path):
    small_run(tmp_path)
    state = integrity.read_state(str(tmp_path / '000004_state.ckpt'))
    assert sorted(state['files']) == ['000004_nets.ckpt', '000004_nets_ema.ckpt', '000004_optims.ckpt']
    for name, record in state['files'].items():  # hashed while written: the same as reading the file back
        assert record == integrity.file_record(str(tmp_path / name))
    assert state['state_sha256'] == integrity.content_digest({k: v for k, v in state.items() if k != 'state_sha256'})
    assert integrity.check_step(str(tmp_path), 4) is None
    assert not [f for f in os.listdir(tmp_path) if f.startswith('.')]  # no marker or temporary file left
    # a byte of the state file's own tensors (the torch RNG state) flipped: the seal no longer matches
    flip_byte_of_tensor(tmp_path / '000004_state.ckpt', state['torch_rng'])
    with pytest.raises(integrity.DamagedCheckpointError, match=r'000004_state.ckpt is damaged: its contents do not '
                                                               r'match the digest'):
        integrity.read_state(str(tmp_path / '000004_state.ckpt'))


def test_check_step_names_the_damaged_file(tmp_path):
    run = small_run(tmp_path, steps=(2, 4, 6, 8))
    weight = run.ckptios[0].module_dict['mapping_network'].shared[0].weight.detach()
    flip_byte_of_tensor(tmp_path / '000008_nets.ckpt', weight)
    torch.load(tmp_path / '000008_nets.ckpt', weights_only=True)  # what torch.load alone makes of it: no error
    ema = tmp_path / '000006_nets_ema.ckpt'
    ema.write_bytes(ema.read_bytes()[:-100])
    (tmp_path / '000004_state.ckpt').unlink()
    d = str(tmp_path)
    assert 'is damaged: its bytes differ from those saved' in integrity.check_step(d, 8)
    assert '000006_nets_ema.ckpt is damaged' in integrity.check_step(d, 6) and 'truncated' in integrity.check_step(d, 6)
    assert '000004_state.ckpt is missing' in integrity.check_step(d, 4)
    assert integrity.latest_intact_step(d, report=False) == 2
    with pytest.raises(integrity.DamagedCheckpointError, match=r'^--resume_iter 8: .*000008_nets.ckpt is damaged.* '
                                                               r'latest intact step .* is 2: resume with'):
        run.load(8)
    # sample/eval read the EMA file only: step 8's is intact, step 6's is not
    ema_only = RunCheckpoint(d, {}, dict(mapping_network=MappingNetwork(8, 16, 2, hidden_dim=16)))
    ema_only.load(8)
    with pytest.raises(integrity.DamagedCheckpointError, match='000006_nets_ema.ckpt is damaged'):
        ema_only.load(6)


def test_files_without_a_state_file_load_as_before(tmp_path, capsys):
    """The authors' files (or a reference run's) have no state file: nothing to verify, loaded as before; a
    reference run resumed here has state files only from then on, and its own steps still load."""
    small_run(tmp_path, steps=(6,))
    for k in integrity.NET_FILES:  # a reference run's step 4: the three files, no state file
        shutil.copy(tmp_path / f'000006_{k}.ckpt', tmp_path / f'000004_{k}.ckpt')
    assert integrity.check_step(str(tmp_path), 4) is None
    assert integrity.latest_intact_step(str(tmp_path)) == 6
    small_run(tmp_path, steps=()).load(4)
    (tmp_path / '000006_state.ckpt').unlink()  # a lone authors' folder, in effect
    assert integrity.latest_intact_step(str(tmp_path)) == 6
    assert capsys.readouterr().out == ''  # nothing skipped, nothing said
    # a state file of an earlier version (no checksums): used as it is
    small_run(tmp_path / 'old', steps=(2,))
    state = integrity.read_state(str(tmp_path / 'old' / '000002_state.ckpt'))
    del state['files'], state['state_sha256']
    torch.save(state, tmp_path / 'old' / '000002_state.ckpt')
    assert integrity.check_step(str(tmp_path / 'old'), 2) is None


def test_init_from_and_translate_verify_our_files(tmp_path):
    from core.files.ckpt_settings import read_nets_file
    from core.inference.translate import Translator
    torch.manual_seed(0)
    args = tiny_args(checkpoint_dir=str(tmp_path))
    nets, ema = build_model(args)
    optims = {k: torch.optim.Adam(nets[k].parameters()) for k in nets if k != 'fan'}
    RunCheckpoint(str(tmp_path), nets, ema, optims).save(3, lambda_ds=1.0, world_size=1)
    fname = str(tmp_path / '000003_nets_ema.ckpt')
    assert set(read_nets_file(fname)) == set(GFE)
    flip_byte_of_tensor(fname, ema['generator'].to_rgb[-1].weight.detach())
    with pytest.raises(integrity.DamagedCheckpointError, match=rf'^--init_from: {fname} is damaged: .*checked against '
                                                               rf'.*000003_state.ckpt'):
        read_nets_file(fname)
    with pytest.raises(integrity.DamagedCheckpointError, match=rf'^--checkpoint_dir: {fname} is damaged'):
        Translator.from_checkpoint(str(tmp_path))
    # the same file on its own, as the authors' release comes: nothing to check it against, it loads
    os.makedirs(tmp_path / 'alone')
    shutil.copy(fname, tmp_path / 'alone' / '000003_nets_ema.ckpt')
    read_nets_file(str(tmp_path / 'alone' / '000003_nets_ema.ckpt'))
    # the authors' file name in a folder of its own
    CheckpointIO(str(tmp_path / 'release' / '{:06d}_nets_ema.ckpt'), **{k: ema[k] for k in GFE}).save(100000)
    read_nets_file(str(tmp_path / 'release' / '100000_nets_ema.ckpt'))


def _fp(root, **domains):
    """The fingerprint of files written under root as {domain: {name: size}} (the contents do not matter)."""
    shutil.rmtree(root, ignore_errors=True)
    files, labels = [], []
    for i, (d, names) in enumerate(domains.items()):
        os.makedirs(root / d)
        for n, size in names.items():
            (root / d / n).write_bytes(b'x' * size)
            files.append(str(root / d / n))
            labels.append(i)
    return fingerprint(Munch(dataset=Munch(samples=files, targets=labels), domains=list(domains)), str(root))


def test_the_fingerprint_says_what_changed(tmp_path):
    d = tmp_path / 'train'
    old = _fp(d, cat={'a.jpg': 10, 'b.jpg': 20}, dog={'c.jpg': 30})
    assert describe_change(old, _fp(d, cat={'a.jpg': 10, 'b.jpg': 20}, dog={'c.jpg': 30})) == []
    assert describe_change(old, _fp(d, cat={'a.jpg': 10, 'x.jpg': 20}, dog={'c.jpg': 31})) == [
        'domain "cat": 2 -> 2 images, 1 added (cat/x.jpg); 1 removed (cat/b.jpg)',
        'domain "dog": 1 -> 1 images, 1 of another size (dog/c.jpg)']
    assert describe_change(old, _fp(d, cat={'a.jpg': 10, 'b.jpg': 20}, wild={'c.jpg': 30})) == [
        'domain "dog" is gone (1 images)', 'domain "wild" is new (1 images)']
    many = _fp(d, cat={'a.jpg': 10, 'b.jpg': 20, **{f'n{k}.jpg': 5 for k in range(5)}}, dog={'c.jpg': 30})
    assert describe_change(old, many) == ['domain "cat": 2 -> 7 images, 5 added (cat/n0.jpg, cat/n1.jpg, '
                                          'cat/n2.jpg, ...)']


def test_a_changed_set_stops_the_resume_unless_allowed(tmp_path, capsys):
    old = _fp(tmp_path / 'data', cat={'a.jpg': 10}, dog={'c.jpg': 30})
    new = _fp(tmp_path / 'data', cat={'a.jpg': 10, 'b.jpg': 11}, dog={'c.jpg': 30})
    args = Munch(train_img_dir='/data', allow_data_change=False, batch_size=8)
    check_resume(dict(data=old, world_size=1), old, args, 10)
    check_resume(dict(world_size=1), new, args, 10)  # an earlier version's state file: nothing to compare
    with pytest.raises(DataChangedError, match=r'^--train_img_dir /data: the training set changed since step 10 was '
                                               r'saved: domain "cat": 1 -> 2 images, 1 added \(cat/b.jpg\)\. .*'
                                               r'--allow_data_change'):
        check_resume(dict(data=old, world_size=1), new, args, 10)
    capsys.readouterr()
    check_resume(dict(data=old, world_size=2), new, Munch(args, allow_data_change=True), 10)
    out = capsys.readouterr().out
    assert 'step 10 was saved by 2 process(es), this run has 1' in out
    assert '--allow_data_change: the training set changed since step 10' in out and "the new set's" in out


def test_fingerprint_of_a_real_loader(tmp_path):
    from core.data_loader import get_train_loader
    from core.demo.data import make_demo_dataset
    root = make_demo_dataset(str(tmp_path / 'd'), n_train=2, n_val=1, size=32)
    loader = get_train_loader(os.path.join(root, 'train'), img_size=32, batch_size=2, num_workers=0)
    fp = fingerprint(loader, os.path.join(root, 'train'))
    assert {d: e['count'] for d, e in fp.items()} == {'square': 2, 'triangle': 2}
    assert fp['square']['bytes'] == sum(os.path.getsize(os.path.join(root, 'train', 'square', f))
                                        for f in ('0000.png', '0001.png'))


def test_a_file_rewritten_at_the_same_size_is_noticed_a_copied_set_is_not(tmp_path):
    from core.machinery.run_identity import PART
    d = tmp_path / 'train'
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, 3 * PART, dtype=np.uint8).tobytes()  # read at its two ends only
    for name, data in (('cat/a.jpg', b'a' * 100), ('cat/b.jpg', b'b' * 100), ('dog/c.jpg', big)):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)

    def fp(root):
        files = [str(root / n) for n in ('cat/a.jpg', 'cat/b.jpg', 'dog/c.jpg')]
        return fingerprint(Munch(dataset=Munch(samples=files, targets=[0, 0, 1]), domains=['cat', 'dog']), str(root))
    old = fp(d)
    # another disk: the same bytes, new modification times
    copy = Path(shutil.copytree(d, tmp_path / 'copy', copy_function=shutil.copyfile))
    for f in copy.rglob('*.jpg'):
        os.utime(f, (1e9, 1e9))
    assert describe_change(old, fp(copy)) == []
    (d / 'cat' / 'b.jpg').write_bytes(b'B' * 100)
    (d / 'dog' / 'c.jpg').write_bytes(big[:-1] + bytes([big[-1] ^ 1]))  # the last byte: a checksum's place
    assert describe_change(old, fp(d)) == ['domain "cat": 2 -> 2 images, 1 rewritten at the same size (cat/b.jpg)',
                                           'domain "dog": 1 -> 1 images, 1 rewritten at the same size (dog/c.jpg)']
    # a state file of an earlier version (no digests): compared by names and sizes, as then
    earlier = {dom: {k: v for k, v in e.items() if k not in ('digests', 'content_sha256')} for dom, e in old.items()}
    assert describe_change(earlier, fp(d)) == []
