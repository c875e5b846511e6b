"""--mode translate and the Translator API (core/inference/translate.py) on randomly initialised networks saved the way training
and the authors save them, with the shared real images (skipped when absent) and odd files made here."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from munch import Munch
from PIL import Image

from conftest import DATA, REPO, tiny_args
from core.checkpoint import CheckpointIO
from core.inference.translate import (TranslateError, Translator, domain_index, find_images, open_rgb, resolve_checkpoint,
                            square_tensor, to_pil, translate_cli)
from core.model import build_model
from core.utils import average_style

pytestmark = pytest.mark.usefixtures('one_thread')

S = 32


def save_network(folder, step=10, domains='female,male', seed=0, img_size=S, **kw):
    """A *_nets_ema.ckpt of a tiny network (and args.json with domains, as training writes it, unless None)."""
    torch.manual_seed(seed)
    args = tiny_args(img_size=img_size, **kw)
    _, ema = build_model(args)
    nets = {k: ema[k] for k in ('generator', 'mapping_network', 'style_encoder')}
    CheckpointIO(os.path.join(folder, '{:06d}_nets_ema.ckpt'), **nets).save(step)
    if domains is not None:
        with open(os.path.join(folder, 'args.json'), 'w') as f:
            json.dump(dict(args, domains=domains), f)
    return os.path.join(folder, f'{step:06d}_nets_ema.ckpt'), Munch(ema)


def cli_args(ckpt_dir, inp, out_dir, **kw):
    from core.config import parse_args
    args = parse_args(['--mode', 'translate', '--device', 'cpu', '--checkpoint_dir', str(ckpt_dir), '--inp', str(inp),
                       '--out_dir', str(out_dir), '--trg_domain', 'male'])
    args.update(kw)
    return args


def odd_inputs(root):
    """A folder tree with a greyscale PNG, an RGBA PNG, an EXIF-rotated non-square JPEG, an unreadable 'JPEG'
    and a text file; returns {relative path: what it is}."""
    (root / 'a' / 'b').mkdir(parents=True)
    Image.fromarray(np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (40, 1)), 'L').save(root / 'grey.png')
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, 15:, 3] = 255  # left half transparent
    Image.fromarray(rgba, 'RGBA').save(root / 'a' / 'rgba.png')
    exif_img = Image.new('RGB', (60, 20), (255, 0, 0))
    exif_img.paste((0, 0, 255), (0, 0, 30, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif_img.save(root / 'a' / 'b' / 'exif.jpg', exif=exif.tobytes(), quality=95)
    (root / 'a' / 'broken.jpg').write_bytes(b'not an image at all')
    (root / 'notes.txt').write_text('ignored')
    return ['a/b/exif.jpg', 'a/broken.jpg', 'a/rgba.png', 'grey.png']


# ---------------------------------------------------------------------------------------------------------- inputs

def test_open_rgb_handles_greyscale_rgba_and_exif(tmp_path):
    odd_inputs(tmp_path)
    grey = np.asarray(open_rgb(tmp_path / 'grey.png'))
    assert grey.shape == (40, 48, 3) and (grey[..., 0] == grey[..., 2]).all() and grey[0, -1, 0] == 255
    rgba = np.asarray(open_rgb(tmp_path / 'a' / 'rgba.png'))
    assert tuple(rgba[5, 2]) == (255, 255, 255)   # transparent: white, not the hidden red
    assert tuple(rgba[5, 25]) == (200, 0, 0)
    upright = open_rgb(tmp_path / 'a' / 'b' / 'exif.jpg')
    assert upright.size == (20, 60)               # rotated to portrait
    px = np.asarray(upright).astype(int)
    assert px[5, 10, 2] > 200 and px[5, 10, 0] < 60    # the blue half is on top after the clockwise turn
    assert px[55, 10, 0] > 200 and px[55, 10, 2] < 60
    with pytest.raises(Exception):
        open_rgb(tmp_path / 'a' / 'broken.jpg')


def test_find_images_recursive_any_layout(tmp_path):
    expected = odd_inputs(tmp_path)
    (tmp_path / '.hidden').mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / '.hidden' / 'x.png')
    assert [rel for _, rel in find_images(str(tmp_path))] == [os.path.normpath(e) for e in expected]
    one = str(tmp_path / 'grey.png')
    assert find_images(one) == [(one, 'grey.png')]
    with pytest.raises(FileNotFoundError, match='--inp'):
        find_images(str(tmp_path / 'nope'))
    (tmp_path / 'empty').mkdir()
    with pytest.raises(TranslateError, match='--inp: no images under'):
        find_images(str(tmp_path / 'empty'))


# ---------------------------------------------------------------------------------------------------------- domains

def test_domain_names_by_name_index_and_unknown():
    names = ['cat', 'dog', 'wild']
    assert domain_index('dog', names) == 1 and domain_index('Wild', names) == 2 and domain_index('0', names) == 0
    with pytest.raises(TranslateError, match=r'"tiger" is not a domain.*cat, dog, wild \(or an index 0-2\)'):
        domain_index('tiger', names)
    with pytest.raises(TranslateError, match='--trg_domain is required: one of cat, dog, wild'):
        domain_index(None, names)


def test_domain_names_sources(tmp_path):
    """--domains, then args.json beside the checkpoint, then the preset; a wrong count is an error."""
    save_network(tmp_path / 'own', domains='circle,square')
    assert Translator.from_checkpoint(str(tmp_path / 'own')).domains == ['circle', 'square']
    assert Translator.from_checkpoint(str(tmp_path / 'own'), domains='x,y').domains == ['x', 'y']
    save_network(tmp_path / 'released', domains=None)  # no args.json, as the authors' files
    assert Translator.from_checkpoint(str(tmp_path / 'released'), preset='celeba_hq').domains == ['female', 'male']
    assert Translator.from_checkpoint(str(tmp_path / 'released')).domains == ['0', '1']
    with pytest.raises(TranslateError, match=r'--domains names 3 domains \(a, b, c\) but the network .* has 2'):
        Translator.from_checkpoint(str(tmp_path / 'released'), domains='a,b,c')
    # a run trained before args.json held the names: its training folders, else its preset
    save_network(tmp_path / 'old', domains=None)
    (tmp_path / 'data' / 'apple').mkdir(parents=True)
    (tmp_path / 'data' / 'pear').mkdir()
    (tmp_path / 'old' / 'args.json').write_text(json.dumps({'train_img_dir': str(tmp_path / 'data'), 'preset': 'demo'}))
    assert Translator.from_checkpoint(str(tmp_path / 'old')).domains == ['apple', 'pear']
    (tmp_path / 'old' / 'args.json').write_text(json.dumps({'train_img_dir': str(tmp_path / 'gone'), 'preset': 'demo'}))
    assert Translator.from_checkpoint(str(tmp_path / 'old')).domains == ['square', 'triangle']


def test_checkpoint_resolution(tmp_path):
    save_network(tmp_path, step=10)
    save_network(tmp_path, step=30)
    assert resolve_checkpoint(str(tmp_path)).endswith('000030_nets_ema.ckpt')
    assert resolve_checkpoint(str(tmp_path), 10).endswith('000010_nets_ema.ckpt')
    with pytest.raises(FileNotFoundError, match=r'--resume_iter 20: .* steps in .*: 10, 30'):
        resolve_checkpoint(str(tmp_path), 20)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match=r'no \*_nets_ema.ckpt in'):
        resolve_checkpoint(str(tmp_path / 'empty'))


# ---------------------------------------------------------------------------------------------------------- styles

def test_latent_styles_are_reproducible_and_truncated(tmp_path):
    fname, ema = save_network(tmp_path)
    tr = Translator.from_checkpoint(fname)
    s = tr.latent_styles(1, num_styles=3, psi=1.0, seed=5)
    assert torch.equal(s, tr.latent_styles(1, num_styles=3, psi=1.0, seed=5))
    assert not torch.allclose(s, tr.latent_styles(1, num_styles=3, psi=1.0, seed=6))
    g = torch.Generator().manual_seed(5)
    z = torch.stack([torch.randn(8, generator=g) for _ in range(3)])
    with torch.no_grad():
        assert torch.allclose(s, ema.mapping_network(z, torch.tensor([1, 1, 1])))
        s_avg = average_style(ema, 1, 8, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(tr.latent_styles(1, 3, psi=0.7, seed=5), torch.lerp(s_avg, s, 0.7), atol=1e-6)
    # psi 0: every style is the domain's mean, so every output is the same image
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 40, 3), dtype=np.uint8))
    outs = tr(img, 'male', num_styles=3, psi=0.0)
    assert len(outs) == 3 and outs[0].size == (S, S)
    assert np.array_equal(np.asarray(outs[0]), np.asarray(outs[2]))
    assert not np.array_equal(np.asarray(tr(img, 'male', num_styles=2)[0]), np.asarray(tr(img, 'female')[0]))


def test_api_translates_one_pil_image_as_the_networks_do(tmp_path):
    """The README's five lines: one PIL image in, the same pixels as G(x, F(z, y)) computed by hand out."""
    fname, ema = save_network(tmp_path)
    tr = Translator.from_checkpoint(str(tmp_path), device='cpu')
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (S, S, 3), dtype=np.uint8))
    out = tr(img, 'male', seed=3)[0]
    x = torch.from_numpy(np.array(img)).permute(2, 0, 1).float()[None] / 255 * 2 - 1
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = to_pil(ema.generator(x, ema.mapping_network(z, torch.tensor([1])))[0].clamp(-1, 1))
    assert np.abs(np.asarray(out).astype(int) - np.asarray(expected).astype(int)).max() <= 1
    # a list of images gives a list of lists (image, style); a tensor works too
    many = tr([img, img], 1, num_styles=2, seed=3)
    assert len(many) == 2 and len(many[0]) == 2 and np.array_equal(np.asarray(many[1][0]), np.asarray(out))
    assert np.array_equal(np.asarray(tr(x[0], 'male', seed=3)[0]), np.asarray(out))


@pytest.mark.skipif(not (DATA / 'celeba_hq' / 'ref').is_dir(), reason='../shared representative images absent')
def test_reference_guided_api_uses_the_style_encoder(tmp_path):
    fname, ema = save_network(tmp_path)
    tr = Translator.from_checkpoint(fname)
    refs = sorted((DATA / 'celeba_hq' / 'ref' / 'male').glob('*.jpg'))[:2]
    src = sorted((DATA / 'celeba_hq' / 'src' / 'female').glob('*.jpg'))[0]
    outs = tr(str(src), 'male', ref=[str(r) for r in refs])
    assert len(outs) == 2 and not np.array_equal(np.asarray(outs[0]), np.asarray(outs[1]))
    x, x_ref = tr.prepare(str(src))[None], torch.stack([tr.prepare(str(r)) for r in refs])
    with torch.no_grad():
        s_ref = ema.style_encoder(x_ref, torch.tensor([1, 1]))
        expected = ema.generator(x.expand(2, -1, -1, -1), s_ref).clamp(-1, 1)
    for o, e in zip(outs, expected):
        assert np.abs(np.asarray(o).astype(int) - np.asarray(to_pil(e)).astype(int)).max() <= 1


# ---------------------------------------------------------------------------------------------------------- the CLI

def sheet_tiles(fname, tile):
    sheet = np.asarray(Image.open(fname).convert('RGB')).astype(float)
    rows, cols = sheet.shape[0] // tile, sheet.shape[1] // tile
    return [[sheet[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] for j in range(cols)] for i in range(rows)]


def test_cli_folder_with_odd_and_unreadable_files(tmp_path, capsys):
    save_network(tmp_path / 'ckpt')
    expected = odd_inputs(tmp_path / 'inp')
    args = cli_args(tmp_path / 'ckpt', tmp_path / 'inp', tmp_path / 'out', num_styles=2, psi=0.7, batch_size=2)
    assert translate_cli(args, torch.device('cpu')) == 1  # something was skipped
    err = capsys.readouterr().err
    assert 'Skipped 1 file(s)' in err and 'broken.jpg' in err
    written = sorted(str(p.relative_to(tmp_path / 'out')) for p in (tmp_path / 'out').rglob('*.png'))
    stems = [os.path.splitext(e)[0] for e in expected if 'broken' not in e]
    assert written == sorted(f'{s}_male_z{k}.png' for s in stems for k in (0, 1))
    for w in written:
        assert Image.open(tmp_path / 'out' / w).size == (S, S)
    # contact sheet: the three readable inputs down the first column (sorted), their two styles beside them
    tiles = sheet_tiles(tmp_path / 'out' / 'contact_sheet.jpg', S)
    assert len(tiles) == 3 and len(tiles[0]) == 3
    for row, rel in zip(tiles, [e for e in expected if 'broken' not in e]):
        inp = np.asarray(to_pil(square_tensor(open_rgb(tmp_path / 'inp' / rel), S))).astype(float)
        assert np.abs(row[0] - inp).mean() < 6  # JPEG
        out0 = np.asarray(Image.open(tmp_path / 'out' / f'{os.path.splitext(rel)[0]}_male_z0.png')).astype(float)
        assert np.abs(row[1] - out0).mean() < 6
    # the same styles for every input: z0 of one call equals z0 of a call on one file
    args1 = cli_args(tmp_path / 'ckpt', tmp_path / 'inp' / 'grey.png', tmp_path / 'one', num_styles=1, psi=0.7)
    assert translate_cli(args1, torch.device('cpu')) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / 'one' / 'grey_male_z0.png')),
                          np.asarray(Image.open(tmp_path / 'out' / 'grey_male_z0.png')))


def test_contact_sheets_page_and_cap_columns(tmp_path, monkeypatch):
    import core.inference.translate as T
    monkeypatch.setattr(T, 'SHEET_ROWS', 2)
    monkeypatch.setattr(T, 'SHEET_STYLES', 1)
    save_network(tmp_path / 'ckpt')
    odd_inputs(tmp_path / 'inp')
    args = cli_args(tmp_path / 'ckpt', tmp_path / 'inp', tmp_path / 'out', num_styles=2)
    assert translate_cli(args, torch.device('cpu')) == 1
    assert Image.open(tmp_path / 'out' / 'contact_sheet.jpg').size == (2 * S, 2 * S)   # input + 1 of 2 styles
    assert Image.open(tmp_path / 'out' / 'contact_sheet_2.jpg').size == (2 * S, 1 * S)  # the third input
    assert len(list((tmp_path / 'out').rglob('*_z1.png'))) == 3                         # the files hold them all


@pytest.mark.skipif(not (DATA / 'custom').is_dir() or not (DATA / 'celeba_hq' / 'ref').is_dir(),
                    reason='../shared representative images absent')
def test_cli_reference_folder_on_real_photos(tmp_path):
    save_network(tmp_path / 'ckpt')
    refs = DATA / 'celeba_hq' / 'ref' / 'female'
    n_ref = len(find_images(str(refs)))
    args = cli_args(tmp_path / 'ckpt', DATA / 'custom', tmp_path / 'out', trg_domain='female', ref=str(refs))
    assert translate_cli(args, torch.device('cpu')) == 0
    for rel in ('female/custom_female', 'male/custom_male'):
        outs = sorted((tmp_path / 'out').glob(f'{rel}_female_ref_*.png'))
        assert len(outs) == n_ref
    tiles = sheet_tiles(tmp_path / 'out' / 'contact_sheet.jpg', S)
    assert len(tiles) == 3 and len(tiles[0]) == 1 + n_ref      # references along the top, two inputs below
    assert tiles[0][0].min() > 245                              # the white corner
    first_ref = np.asarray(to_pil(square_tensor(open_rgb(sorted(refs.glob('*.jpg'))[0]), S))).astype(float)
    assert np.abs(tiles[0][1] - first_ref).mean() < 6


def test_cli_align_skips_faces_it_cannot_place(tmp_path, random_wing, capsys):
    """--align with a FAN that finds landmarks (random weights) and one that finds none (all-zero weights: every
    landmark at one point, so no eye/mouth axis): the second is named and skipped. 64 px: FAN.get_landmark scales
    by img_size // 64, which is 0 below that."""
    from core.wing import FAN
    from test_align import synthetic_mean_face
    save_network(tmp_path / 'ckpt', img_size=64)
    lm = tmp_path / 'lm.npz'
    np.savez(lm, mean=synthetic_mean_face().astype(np.float32))
    inp = tmp_path / 'inp'
    inp.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 60, 3), dtype=np.uint8)).save(inp / 'face.png')
    args = cli_args(tmp_path / 'ckpt', inp, tmp_path / 'out', align=True, wing_path=random_wing, lm_path=str(lm))
    assert translate_cli(args, torch.device('cpu')) == 0
    assert Image.open(tmp_path / 'out' / 'face_male_z0.png').size == (64, 64)
    zero = FAN()
    for p in zero.parameters():
        torch.nn.init.zeros_(p)
    torch.save({'state_dict': zero.state_dict()}, tmp_path / 'zero_wing.ckpt')
    args = cli_args(tmp_path / 'ckpt', inp, tmp_path / 'out2', align=True, wing_path=str(tmp_path / 'zero_wing.ckpt'),
                    lm_path=str(lm))
    assert translate_cli(args, torch.device('cpu')) == 1
    assert 'face.png: ValueError: cannot align' in capsys.readouterr().err
    assert not list((tmp_path / 'out2').glob('*.png'))


def test_released_layout_with_high_pass_path(tmp_path, random_wing):
    """A w_hpf 1 file without hpf.filter and without args.json (the authors' CelebA-HQ release): its settings and
    w_hpf are read from the file, the names from --preset, and the masks come from the FAN."""
    fname, ema = save_network(tmp_path, domains=None, w_hpf=1, wing_path=random_wing)
    raw = torch.load(fname)
    del raw['generator']['hpf.filter']
    torch.save(raw, fname)
    tr = Translator.from_checkpoint(fname, preset='celeba_hq', wing_path=random_wing)
    assert tr.args.w_hpf == 1 and tr.domains == ['female', 'male'] and 'fan' in tr.nets
    img = Image.fromarray(np.random.default_rng(2).integers(0, 255, (S, S, 3), dtype=np.uint8))
    x = tr.prepare(img)[None]
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(777))
    with torch.no_grad():
        expected = ema.generator(x, ema.mapping_network(z, torch.tensor([0])), masks=ema.fan.get_heatmap(x))
    out = tr(img, 'female')[0]
    assert np.abs(np.asarray(out).astype(int) - np.asarray(to_pil(expected[0].clamp(-1, 1))).astype(int)).max() <= 1


def test_main_exit_codes(tmp_path):
    """The command line: 1 when something was skipped; an unknown domain is a DataError (main.py: 'error: ...',
    exit code 2) raised before any image is read."""
    from core.data_loader import DataError
    save_network(tmp_path / 'ckpt')
    odd_inputs(tmp_path / 'inp')
    cmd = [sys.executable, 'main.py', '--mode', 'translate', '--device', 'cpu', '--checkpoint_dir',
           str(tmp_path / 'ckpt'), '--inp', str(tmp_path / 'inp'), '--out_dir', str(tmp_path / 'out'),
           '--trg_domain', 'female']
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert p.returncode == 1, p.stderr
    assert 'broken.jpg' in p.stderr and len(list((tmp_path / 'out').rglob('*_female_z0.png'))) == 3
    args = cli_args(tmp_path / 'ckpt', tmp_path / 'missing_inp', tmp_path / 'out2', trg_domain='dog')
    with pytest.raises(DataError, match='"dog" is not a domain of this network; its domains: female, male'):
        translate_cli(args, torch.device('cpu'))  # --inp does not exist: the name was checked first
