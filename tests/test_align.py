"""Face alignment (core/align.py): the similarity transform, the mirror padding, the warp, and --mode align end to end.

A randomly initialised FAN stands in for wing.ckpt and a synthetic face layout for celeba_lm_mean.npz, so nothing is
downloaded; the geometry is checked with landmarks we choose.
"""
from pathlib import Path

import numpy as np
import pytest
import torch
from munch import Munch
from PIL import Image

from core import align as A
from core import wing as W
from core.wing import FAN

REPRESENTATIVE = Path(__file__).resolve().parents[1].parent / 'shared' / 'data' / 'representative'


def synthetic_mean_face():
    """A plausible 98-point (WFLW) face layout at 256 px: chin arc, brows, nose, eyes, mouth, pupils."""
    lm = np.zeros((98, 2))
    t = np.linspace(np.pi * 0.05, np.pi * 0.95, 33)
    lm[0:33] = np.stack([128 - 90 * np.cos(t), 100 + 125 * np.sin(t)], 1)             # chin 0-32
    lm[33:42] = np.stack([np.linspace(55, 115, 9), 80 - 8 * np.sin(np.linspace(0, np.pi, 9))], 1)   # brow L
    lm[42:51] = np.stack([np.linspace(141, 201, 9), 80 - 8 * np.sin(np.linspace(0, np.pi, 9))], 1)  # brow R
    lm[51:55] = np.stack([np.full(4, 128.), np.linspace(100, 145, 4)], 1)              # nose ridge
    lm[55:60] = np.stack([np.linspace(110, 146, 5), np.full(5, 152.)], 1)              # nostrils
    a = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    lm[60:68] = np.stack([90 - 16 * np.cos(a), 110 - 6 * np.sin(a)], 1)                # eye L (60 = outer corner)
    lm[68:76] = np.stack([166 - 16 * np.cos(a), 110 - 6 * np.sin(a)], 1)               # eye R
    b = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    lm[76:88] = np.stack([128 - 30 * np.cos(b), 185 - 12 * np.sin(b)], 1)              # outer lip, 76 L / 82 R
    c = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    lm[88:96] = np.stack([128 - 20 * np.cos(c), 185 - 4 * np.sin(c)], 1)               # inner lip
    lm[96], lm[97] = (90, 110), (166, 110)                                              # pupils
    return lm


def similarity(points, theta, k, t, centre=(0., 0.)):
    """k * R(theta) (points - centre) + centre + t."""
    c, s = np.cos(theta), np.sin(theta)
    R = np.array([[c, -s], [s, c]])
    return (points - centre) @ R.T * k + np.asarray(centre) + np.asarray(t)


pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.one_thread


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp('align_assets')
    torch.manual_seed(0)
    wing = root / 'wing.ckpt'
    torch.save({'state_dict': FAN().state_dict()}, wing)
    lm = root / 'celeba_lm_mean.npz'
    np.savez(lm, mean=synthetic_mean_face().astype(np.float32))
    return Munch(wing=str(wing), lm=str(lm))


@pytest.fixture(scope='module')
def aligner64(assets):
    return W.FaceAligner(assets.wing, assets.lm, 64, 'cpu')


# ----------------------------------------------------------------------------------------------------------------------
# the transform

@pytest.mark.parametrize('theta,k,t', [(0.0, 1.0, (0, 0)), (0.35, 0.8, (5, -3)), (-1.2, 1.7, (-20, 12)),
                                       (2.6, 0.5, (40, 7)), (np.pi, 1.1, (0, 9))])
def test_landmarks2mat_maps_similar_landmarks_onto_the_reference(aligner64, theta, k, t):
    ref = aligner64.ref_landmarks
    src = similarity(ref, theta, k, t, centre=(30, 20))
    M = aligner64.landmarks2mat(src)
    mapped = (np.c_[src, np.ones(98)] @ M.T)[:, :2]
    np.testing.assert_allclose(mapped, ref, atol=1e-6)
    # a similarity: no shear, no reflection, scale 1/k, and the last row untouched
    np.testing.assert_allclose(M[:2, :2] @ M[:2, :2].T, np.eye(2) / k ** 2, atol=1e-9)
    assert np.linalg.det(M[:2, :2]) > 0
    np.testing.assert_allclose(M[2], [0, 0, 1])


def test_reference_landmarks_scale_with_the_output_size(assets):
    mean = synthetic_mean_face()
    for size in (128, 256, 512):
        aligner = A.FaceGeometry(assets.lm, size)  # only the landmark part: no FAN needed
        np.testing.assert_allclose(aligner.ref_landmarks, mean * size / 256, atol=1e-3)


def test_xaxis_and_rotation_helpers():
    lm = synthetic_mean_face()
    np.testing.assert_allclose(A.landmarks2xaxis(lm), [1, 0], atol=1e-12)  # an upright face: axis along +x
    rotated = similarity(lm, 0.5, 1.3, (7, 7))
    np.testing.assert_allclose(A.landmarks2xaxis(rotated), [np.cos(0.5), np.sin(0.5)], atol=1e-12)
    R = A.vecs2R(np.array([np.cos(0.5), np.sin(0.5)]), np.array([1.0, 0.0]))
    np.testing.assert_allclose(R[:2, :2] @ [np.cos(0.5), np.sin(0.5)], [1, 0], atol=1e-12)
    np.testing.assert_allclose(A.vecs2R(np.array([1.0, 0]), np.array([1.0, 1e-17]))[:2, :2], np.eye(2))  # no NaN
    np.testing.assert_allclose(A.landmarks2S(lm, 2 * lm)[0, 0], 2.0)


# ----------------------------------------------------------------------------------------------------------------------
# padding and warping

@pytest.mark.parametrize('H,W', [(64, 64), (40, 60)])
def test_pad_mirror_size_centre_and_border(H, W):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (H, W, 3))
    landmarks = rng.uniform(0, 40, (98, 2))
    before = landmarks.copy()
    padded, moved = A.pad_mirror(img, landmarks)
    assert padded.shape == (2 * H, 2 * W, 3)
    np.testing.assert_array_equal(padded[H // 2:H // 2 + H, W // 2:W // 2 + W], img)  # centre untouched
    np.testing.assert_array_equal(landmarks, before)                                  # input not modified
    np.testing.assert_allclose(moved - landmarks, np.broadcast_to([(2 * W) // 4, (2 * H) // 4], (98, 2)))
    # the outermost rows are the blurred copy alone (weight 0): smooth, unlike the noisy mirror image
    reflect = np.pad(img, ((H // 2, H // 2), (W // 2, W // 2), (0, 0)), mode='reflect')
    assert np.abs(np.diff(padded[0], axis=0)).mean() < 0.5 * np.abs(np.diff(reflect[0], axis=0)).mean()
    # just outside the image the weight is close to 1: nearly the mirror image
    row = H // 2 - 1
    assert np.abs(padded[row, W // 2:-W // 2] - reflect[row, W // 2:-W // 2]).mean() < 0.2 * np.abs(
        padded[0, W // 2:-W // 2] - reflect[0, W // 2:-W // 2]).mean()
    assert padded.min() >= 0 and padded.max() <= 255


def test_warp_uses_pixel_centres_like_opencv():
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 255, (16, 16, 3))
    # scale 2 about pixel (0, 0): output pixel (2i, 2j) samples input pixel (i, j) exactly
    out = A.warp_image(img, np.diag([2.0, 2.0, 1.0]), (32, 32))
    np.testing.assert_allclose(out[0:28:2, 0:28:2], img[:14, :14], atol=1e-3)
    # integer translation: a plain shift, zeros where nothing maps
    M = np.eye(3)
    M[:2, 2] = (3, 5)  # x + 3, y + 5
    out = A.warp_image(img, M, (16, 16))
    np.testing.assert_allclose(out[5:, 3:], img[:11, :13], atol=1e-3)
    assert np.all(out[:5] == 0) and np.all(out[:, :3] == 0)


def blob_image(size, centres, sigma=1.5):
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    img = np.zeros((size, size))
    for x, y in centres:
        img += 255 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
    return np.repeat(np.clip(img, 0, 255)[..., None], 3, axis=2)


def centroid(img, near, radius=6):
    x0, y0 = int(round(near[0])), int(round(near[1]))
    win = img[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1, 0].astype(np.float64)
    win = np.clip(win - 0.05 * win.max(), 0, None)
    yy, xx = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(win * xx).sum(), (win * yy).sum()]) / win.sum()


def test_align_image_moves_landmarks_onto_the_mean_face(aligner64):
    ref = aligner64.ref_landmarks  # (98, 2) at 64 px
    src = similarity(ref, 0.3, 0.8, (3, -2), centre=(32, 32))
    img = blob_image(64, [src[96], src[82]])  # bright spots at the left pupil and the right mouth corner
    out = aligner64.align_image(img, src)
    assert out.shape == (64, 64, 3)
    for idx in (96, 82):
        np.testing.assert_allclose(centroid(out, ref[idx]), ref[idx], atol=0.2)


def test_degenerate_landmarks_are_an_error(aligner64):
    with pytest.raises(ValueError, match='no face'):
        aligner64.align_image(np.zeros((64, 64, 3)), np.full((98, 2), 10.0))


# ----------------------------------------------------------------------------------------------------------------------
# align_faces

def make_args(assets, img_size):
    return Munch(img_size=img_size, wing_path=assets.wing, lm_path=assets.lm, device='cpu')


def test_align_faces_geometry_through_files(assets, tmp_path, monkeypatch):
    """With the landmarks known (the FAN bypassed), the saved file has the marked points at the mean face's."""
    size = 64
    ref = A.load_mean_landmarks(assets.lm) * size / 256
    src = similarity(ref, -0.25, 1.15, (-2, 3), centre=(32, 32))
    inp = tmp_path / 'in'
    inp.mkdir()
    Image.fromarray(blob_image(size, [src[97], src[76]]).round().astype(np.uint8)).save(inp / 'face.png')
    monkeypatch.setattr(W.FaceAligner, 'get_landmarks', lambda self, x: src[None].copy())
    written = W.align_faces(make_args(assets, size), str(inp), str(tmp_path / 'out'))
    assert written == [str(tmp_path / 'out' / 'face.png')]
    out = np.asarray(Image.open(written[0]))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    for idx in (97, 76):
        np.testing.assert_allclose(centroid(out, ref[idx]), ref[idx], atol=0.3)


def test_list_images_filters_and_sorts(tmp_path):
    for name in ['b.png', 'a.JPG', 'c.jpeg', 'd.JPEG', 'e.Png', 'notes.txt', 'f.gif']:
        (tmp_path / name).write_bytes(b'')
    (tmp_path / 'sub.png').mkdir()  # a folder with an image-like name is not an image
    assert A.list_images(str(tmp_path)) == ['a.JPG', 'b.png', 'c.jpeg', 'd.JPEG', 'e.Png']


def test_align_faces_end_to_end_with_a_random_fan(assets, tmp_path):
    inp, out = tmp_path / 'in', tmp_path / 'out'
    inp.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in [('b.png', (70, 50)), ('a.JPG', (60, 80))]:
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(inp / name)
    (inp / 'notes.txt').write_text('not an image')
    written = W.align_faces(make_args(assets, 64), str(inp), str(out))
    assert written == [str(out / 'a.JPG'), str(out / 'b.png')]  # sorted, the .txt left alone
    assert sorted(p.name for p in out.iterdir()) == ['a.JPG', 'b.png']
    for p in written:
        with Image.open(p) as im:
            assert im.size == (64, 64) and im.mode == 'RGB'
    with Image.open(out / 'a.JPG') as im:
        assert im.format == 'JPEG'  # saved in the format its name says


def test_align_faces_errors_name_the_missing_file(assets, tmp_path):
    inp = tmp_path / 'in'
    inp.mkdir()
    with pytest.raises(FileNotFoundError, match='No images') as e:
        W.align_faces(make_args(assets, 64), str(inp), str(tmp_path / 'out'))
    assert str(inp) in str(e.value)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(inp / 'x.png')
    args = make_args(assets, 64)
    args.wing_path = str(tmp_path / 'nowhere' / 'wing.ckpt')
    with pytest.raises(FileNotFoundError, match='download.sh wing') as e:
        W.align_faces(args, str(inp), str(tmp_path / 'out'))
    assert args.wing_path in str(e.value)
    args = make_args(assets, 64)
    args.lm_path = str(tmp_path / 'celeba_lm_mean.npz')
    with pytest.raises(FileNotFoundError, match='download.sh wing') as e:
        W.align_faces(args, str(inp), str(tmp_path / 'out'))
    assert args.lm_path in str(e.value)
    with pytest.raises(FileNotFoundError, match='not found'):
        W.align_faces(make_args(assets, 64), str(tmp_path / 'missing'), str(tmp_path / 'out'))


@pytest.mark.skipif(not (REPRESENTATIVE / 'custom').is_dir(), reason='shared representative images absent')
def test_align_faces_on_the_representative_custom_images(assets, tmp_path):
    for domain in sorted(p.name for p in (REPRESENTATIVE / 'custom').iterdir() if p.is_dir()):
        inp = REPRESENTATIVE / 'custom' / domain
        written = W.align_faces(make_args(assets, 256), str(inp), str(tmp_path / domain))
        assert [Path(p).name for p in written] == A.list_images(str(inp))
        for p in written:
            with Image.open(p) as im:
                im.load()
                assert im.size == (256, 256) and im.mode == 'RGB'
