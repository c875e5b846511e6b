"""Interpolation videos (core/video.py): alphas, frame layout, styles per frame, and the encoded mp4.

Tiny networks at 32 px; the videos are decoded back through the same ffmpeg binary (imageio-ffmpeg ships no ffprobe).
"""
import re
import subprocess

import numpy as np
import pytest
import torch
from munch import Munch

from core import video as V
from core.model import Generator, MappingNetwork, StyleEncoder, he_init

S = 32        # image size
B = 2         # source images
SD = 16       # style dim
T = 31        # frames per interpolation


pytestmark = pytest.mark.usefixtures('one_thread')  # see conftest.one_thread


@pytest.fixture(scope='module')
def nets():
    torch.manual_seed(0)
    nets = Munch(generator=Generator(img_size=S, style_dim=SD, max_conv_dim=32, w_hpf=0, dim_in=8),
                 mapping_network=MappingNetwork(latent_dim=16, style_dim=SD, num_domains=2, hidden_dim=32),
                 style_encoder=StyleEncoder(img_size=S, style_dim=SD, num_domains=2, max_conv_dim=32, dim_in=8))
    for net in nets.values():
        net.apply(he_init).eval()  # as build_model: the style then visibly changes the output
    return nets


def smooth_images(n, seed):
    """Smooth random pictures in [-1, 1] (noise would not survive the video codec at 32 px)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(small, size=S, mode='bilinear', align_corners=False)


@pytest.fixture(scope='module')
def images():
    x_src, x_ref = smooth_images(B, 1), smooth_images(5, 2)
    y_ref = torch.tensor([0, 0, 1, 1, 1])  # pairs (0, 1), (2, 3), (3, 4); (1, 2) crosses domains
    return x_src, x_ref, y_ref


ARGS = Munch(w_hpf=0)


def to_uint8(x):
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8, as the frames are made."""
    return V.tensor2ndarray255(x)


def translations(frame):
    """The translated row of a frame: below the sources, right of the 64-px reference panel."""
    return frame[S:, -B * S:]


def row(x):
    """(B, 3, S, S) -> the images side by side as uint8 (S, B*S, 3)."""
    return np.concatenate(list(to_uint8(x)), axis=1)


def decode(path):
    """All frames of a video, decoded to rgb24 by the same ffmpeg; and ffmpeg's description of the stream."""
    exe = V.find_ffmpeg()
    out = subprocess.run([exe, '-v', 'error', '-i', str(path), '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:'],
                         capture_output=True, check=True).stdout
    info = subprocess.run([exe, '-hide_banner', '-i', str(path)], capture_output=True, text=True).stderr
    return out, info


def test_get_alphas_matches_the_reference_formula():
    alphas = V.get_alphas()
    expected = [0] + [torch.sigmoid(torch.tensor(a)).item() for a in np.arange(-5, 5, 0.5)] + [1] * 10
    assert len(alphas) == T
    np.testing.assert_allclose(alphas, expected, rtol=1e-6, atol=1e-7)
    assert alphas[0] == 0 and alphas[-11] < 1 and alphas[-10:] == [1] * 10
    assert np.all(np.diff(alphas[:21]) > 0)


def test_slide_moves_the_references_up():
    g = torch.Generator().manual_seed(2)
    x_prev, x_next = torch.rand(1, 3, S, S, generator=g), -torch.rand(1, 3, S, S, generator=g)
    canvas = V.slide([x_prev, x_next])
    assert canvas.shape == (T, 3, 2 * S, S + 32)
    assert torch.all(canvas[:, :, :, S:] == -1)                       # the margin stays blank
    assert torch.all(canvas[0, :, :S] == -1)                          # alpha 0: blank on top,
    assert torch.equal(canvas[0, :, S:, :S], x_prev[0])              # x_prev below
    assert torch.equal(canvas[-1, :, :S, :S], x_prev[0])             # alpha 1: x_prev on top,
    assert torch.equal(canvas[-1, :, S:, :S], x_next[0])             # x_next below
    for t, alpha in enumerate(V.get_alphas()):
        top = int(S * (1 - alpha))
        assert torch.equal(canvas[t, :, top:top + S, :S], x_prev[0])
        assert torch.all(canvas[t, :, :top] == -1)


def test_ref_frames_layout_and_styles(nets, images):
    x_src, x_ref, y_ref = images
    frames = list(V.ref_frames(nets, ARGS, x_src, x_ref, y_ref))
    assert len(frames) == 3 * T + 10
    assert all(f.shape == (2 * S, S + 32 + B * S, 3) and f.dtype == np.uint8 for f in frames)
    sources = row(x_src)
    assert all(np.array_equal(f[:S, -B * S:], sources) for f in frames)  # the source row never changes

    with torch.no_grad():
        s_ref = nets.style_encoder(x_ref, y_ref)
        fake = [row(nets.generator(x_src, s_ref[i:i + 1])) for i in range(5)]

    def close(a, b):
        return np.abs(a.astype(int) - b.astype(int)).max() <= 1

    # segment 1 goes from reference 0's style to reference 1's, segment 2 starts at reference 2's (the pair (1, 2)
    # crosses domains and is skipped), segment 3 goes from 3 to 4
    assert close(translations(frames[0]), fake[0]) and close(translations(frames[T - 1]), fake[1])
    assert close(translations(frames[T]), fake[2]) and close(translations(frames[2 * T - 1]), fake[3])
    assert close(translations(frames[2 * T]), fake[3]) and close(translations(frames[3 * T - 1]), fake[4])
    # alpha = sigmoid(0) = 0.5 at frame 11: neither end's picture
    assert V.get_alphas()[11] == 0.5
    assert not close(translations(frames[11]), fake[0]) and not close(translations(frames[11]), fake[1])
    # the reference panel shows the pair being interpolated
    assert np.array_equal(frames[2 * T][S:, :S], to_uint8(x_ref[3:4])[0])
    assert np.array_equal(frames[3 * T - 1][:S, :S], to_uint8(x_ref[3:4])[0])
    assert np.array_equal(frames[3 * T - 1][S:, :S], to_uint8(x_ref[4:5])[0])
    assert all(np.array_equal(f, frames[3 * T - 1]) for f in frames[-10:])  # the last frame held


def test_video_ref_writes_a_decodable_mp4(nets, images, tmp_path):
    x_src, x_ref, y_ref = images
    fname = tmp_path / 'results' / 'video_ref.mp4'
    n = V.video_ref(nets, ARGS, x_src, x_ref, y_ref, str(fname))
    assert n == 3 * T + 10
    raw, info = decode(fname)
    H, W = 2 * S, S + 32 + B * S
    assert len(raw) % (H * W * 3) == 0
    decoded = np.frombuffer(raw, np.uint8).reshape(-1, H, W, 3)
    # 30 fps in, half speed, 30 fps out: every frame but the first shown twice
    assert len(decoded) == 2 * n - 1
    assert 'h264' in info and 'yuv420p' in info and re.search(r'\b30 fps\b', info)
    frames = list(V.ref_frames(nets, ARGS, x_src, x_ref, y_ref))
    for k in (0, T // 2, T, 3 * T + 9):
        d, f = decoded[max(2 * k - 1, 0)].astype(float), frames[k].astype(float)
        # lossy, but the same picture: about 6 levels off on average here, versus 25 or more for another frame
        assert abs(d.mean() - f.mean()) < 3 and np.abs(d - f).mean() < 10
        assert np.abs(d - frames[(k + 40) % n].astype(float)).mean() > 15


def test_video_latent_frames_and_truncation(nets, images, tmp_path):
    x_src = images[0]
    g = torch.Generator().manual_seed(3)
    z_list = [torch.randn(1, 16, generator=g).repeat(B, 1) for _ in range(3)]
    y_list = [torch.zeros(B, dtype=torch.long), torch.ones(B, dtype=torch.long)]
    n_frames = 2 * 2 * T + 10

    # psi = 0: every style is the domain's average style, so each domain's frames are all the same picture
    frames = list(V.latent_frames(nets, ARGS, x_src, y_list, z_list, 0.0, generator=torch.Generator().manual_seed(4)))
    assert len(frames) == n_frames and frames[0].shape == (2 * S, B * S, 3)
    with torch.no_grad():
        z_many = torch.randn(10000, 16, generator=torch.Generator().manual_seed(4))
        s_avg0 = nets.mapping_network(z_many, torch.zeros(10000, dtype=torch.long)).mean(0, keepdim=True)
    expected0 = row(nets.generator(x_src, s_avg0.repeat(B, 1)).detach())
    assert np.abs(frames[0][S:].astype(int) - expected0.astype(int)).max() <= 1
    assert all(np.array_equal(f, frames[0]) for f in frames[:2 * T])
    assert all(np.array_equal(f, frames[2 * T]) for f in frames[2 * T:])
    assert not np.array_equal(frames[0], frames[2 * T])
    assert all(np.array_equal(f[:S], row(x_src)) for f in frames)

    # psi = 1: plain mapping-network styles; the first frame is z_list[0]'s, the 31st z_list[1]'s
    frames = list(V.latent_frames(nets, ARGS, x_src, y_list, z_list, 1.0))
    with torch.no_grad():
        for k, z in ((0, z_list[0]), (T - 1, z_list[1]), (T, z_list[1]), (2 * T - 1, z_list[2])):
            expected = row(nets.generator(x_src, nets.mapping_network(z, y_list[0])))
            assert np.abs(frames[k][S:].astype(int) - expected.astype(int)).max() <= 1

    fname = tmp_path / 'video_latent.mp4'
    assert V.video_latent(nets, ARGS, x_src, y_list, z_list, 0.7, str(fname)) == n_frames
    raw, _ = decode(fname)
    assert len(raw) == (2 * n_frames - 1) * (2 * S) * (B * S) * 3


def test_masks_come_from_the_fan_once_when_w_hpf_is_on(images):
    torch.manual_seed(0)
    calls = []

    class StubFan:
        def get_heatmap(self, x):
            calls.append(x.shape)
            return torch.ones(x.size(0), 1, 256, 256), torch.ones(x.size(0), 1, 256, 256)

    nets_hpf = Munch(generator=Generator(img_size=S, style_dim=SD, max_conv_dim=32, w_hpf=1, dim_in=8).eval(),
                     style_encoder=StyleEncoder(img_size=S, style_dim=SD, num_domains=2, max_conv_dim=32,
                                                dim_in=8).eval(),
                     fan=StubFan())
    x_src, x_ref, y_ref = images
    frames = list(V.ref_frames(nets_hpf, Munch(w_hpf=1), x_src, x_ref[:2], y_ref[:2]))
    assert len(calls) == 1 and calls[0] == x_src.shape
    with torch.no_grad():
        s = nets_hpf.style_encoder(x_ref[:1], y_ref[:1])
        masks = StubFan().get_heatmap(x_src)
        with_masks = row(nets_hpf.generator(x_src, s, masks=masks))
        without = row(nets_hpf.generator(x_src, s))
    assert np.abs(translations(frames[0]).astype(int) - with_masks.astype(int)).max() <= 1
    assert not np.array_equal(with_masks, without)


def test_video_ref_needs_a_same_domain_pair(nets, images, tmp_path):
    x_src, x_ref, _ = images
    with pytest.raises(ValueError, match='same domain'):
        V.video_ref(nets, ARGS, x_src, x_ref[:3], torch.tensor([0, 1, 0]), str(tmp_path / 'v.mp4'))
    assert not (tmp_path / 'v.mp4').exists()


def test_find_ffmpeg_fallbacks(monkeypatch):
    import imageio_ffmpeg
    monkeypatch.setattr(V.shutil, 'which', lambda name: None)
    assert V.find_ffmpeg() == imageio_ffmpeg.get_ffmpeg_exe()

    def missing():
        raise RuntimeError('no ffmpeg for this platform')
    monkeypatch.setattr(imageio_ffmpeg, 'get_ffmpeg_exe', missing)
    with pytest.raises(V.FFmpegNotFoundError, match='ffmpeg not found.*imageio-ffmpeg'):
        V.find_ffmpeg()
    with pytest.raises(V.FFmpegNotFoundError):  # raised before any work: the nets are never touched
        V.video_ref(None, ARGS, None, None, None, 'unused.mp4')


def test_save_video_pads_odd_sizes_and_reports_ffmpeg_errors(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 33, 47, 3), dtype=np.uint8)
    fname = tmp_path / 'odd.mp4'
    assert V.save_video(str(fname), frames) == 3
    raw, _ = decode(fname)
    assert len(raw) == 5 * 34 * 48 * 3
    with pytest.raises(RuntimeError, match='ffmpeg .* failed'):
        V.save_video(str(tmp_path / 'bad.mp4'), frames, vcodec='no_such_codec')
    with pytest.raises(ValueError, match='uint8'):
        V.save_video(str(tmp_path / 'f.mp4'), frames.astype(np.float32))
    with pytest.raises(ValueError, match='no frames'):
        V.save_video(str(tmp_path / 'e.mp4'), [])
