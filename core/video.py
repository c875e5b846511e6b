"""Style interpolation videos of `--mode sample` (SPEC section 5).

    video_ref(nets_ema, args, x_src, x_ref, y_ref, 'expr/results/video_ref.mp4')
    video_latent(nets_ema, args, x_src, y_list, z_list, psi=0.7, fname='expr/results/video_latent.mp4')

A frame (as in the reference): on the left a panel where the previous and the next reference images slide up
(2H x (W + 32)); on the right the source images on top and, below them, their translations with the style
lerp(s_prev, s_next, alpha). Per pair of styles, alpha runs through get_alphas(): 0, sigmoid(-5 ... 4.5 step 0.5),
then ten 1s (31 frames); the last frame is repeated 10 more times. Encoding: ffmpeg (libx264, yuv420p), frames
fed at 30 fps and played at half speed (setpts=2*PTS), output at 30 fps.

ffmpeg comes from PATH or, failing that, from the imageio-ffmpeg wheel (see find_ffmpeg).

Differences from the reference: it gives ffmpeg no input rate, so its raw frames go in at ffmpeg's default 25 fps
(12.5 after setpts); here they go in at 30 as SPEC section 5 says. Frames are streamed to ffmpeg one by one instead
of held in memory as one float array; pixel values are rounded, not truncated, to uint8; and a reference set with
no two consecutive images of one domain is a ValueError instead of a NameError.
"""
import os
import shutil
import subprocess
import tempfile

import numpy as np
import torch
from tqdm import tqdm

from core.model import masks_of
from core.utils import average_style

FPS = 30
SLIDE_MARGIN = 32  # width of the blank strip right of the sliding reference panel (the reference's, at any size)
LEN_TAIL = 10


class FFmpegNotFoundError(RuntimeError):
    """No ffmpeg binary: callers can skip the videos and keep the images."""


def find_ffmpeg():
    """Path of an ffmpeg binary: the one on PATH, else the one shipped by imageio-ffmpeg."""
    exe = shutil.which('ffmpeg')
    if exe:
        return exe
    hint = 'Install it (e.g. `apt-get install ffmpeg`) or `pip install imageio-ffmpeg`.'
    try:
        import imageio_ffmpeg
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:  # ImportError, or RuntimeError when the wheel has no binary for this platform
        raise FFmpegNotFoundError(f'ffmpeg not found: it is needed to write the interpolation videos. {hint} '
                                  f'({type(e).__name__}: {e})') from e
    if not exe or not os.path.isfile(exe):
        raise FFmpegNotFoundError(f'ffmpeg not found (imageio-ffmpeg pointed to {exe!r}). {hint}')
    return exe


def sigmoid(x, w=1):
    return 1. / (1 + np.exp(-w * x))


def get_alphas(start=-5, end=5, step=0.5, len_tail=LEN_TAIL):
    """Interpolation weights: 0, a sigmoid ramp, then len_tail 1s (31 values with the defaults)."""
    return [0] + [float(sigmoid(a)) for a in np.arange(start, end, step)] + [1] * len_tail


@torch.no_grad()
def interpolate(nets, args, x_src, s_prev, s_next, masks=None):
    """(T, C, 2H, B*W) on the CPU: per alpha, the sources on top, their translations with lerp(s_prev, s_next, alpha)
    below, the B columns side by side."""
    frames = []
    for alpha in get_alphas():
        s_ref = torch.lerp(s_prev, s_next, alpha)
        x_fake = nets.generator(x_src, s_ref, masks=masks)
        entries = torch.cat([x_src, x_fake], dim=2).cpu()  # (B, C, 2H, W)
        frames.append(torch.cat(list(entries), dim=2))     # (C, 2H, B*W)
    return torch.stack(frames)


def slide(entries, margin=SLIDE_MARGIN):
    """The sliding reference panel: entries = [x_prev, x_next], each (1, C, H, W) -> (T, C, 2H, W + margin).
    At alpha 0 x_prev fills the lower half (the upper is blank, -1); as alpha grows both move up, until x_prev is
    on top and x_next below it."""
    _, C, H, W = entries[0].shape
    alphas = get_alphas()
    canvas = -torch.ones((len(alphas), C, 2 * H, W + margin))
    merged = torch.cat([e.cpu() for e in entries], dim=2)  # (1, C, 2H, W)
    for t, alpha in enumerate(alphas):
        top = int(H * (1 - alpha))
        canvas[t, :, top:2 * H, :W] = merged[0, :, :2 * H - top, :]
    return canvas


def tensor2ndarray255(images):
    """(T, C, H, W) in [-1, 1] -> (T, H, W, C) uint8 (rounded; the reference truncates)."""
    images = torch.clamp(images * 0.5 + 0.5, 0, 1)
    return (images * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _pairs_of_same_domain(y_ref):
    """Indices (i, i+1) of consecutive references sharing a domain: the pairs the reference interpolates."""
    y = [int(v) for v in y_ref]
    return [(i, i + 1) for i in range(len(y) - 1) if y[i] == y[i + 1]]


@torch.no_grad()
def ref_frames(nets, args, x_src, x_ref, y_ref):
    """The frames of video_ref, as uint8 (2H, W + 32 + B*W, 3) arrays: for each consecutive pair of references of
    the same domain, 31 frames; then the last frame 10 more times."""
    pairs = _pairs_of_same_domain(y_ref)
    if not pairs:
        raise ValueError('video_ref needs two consecutive reference images of the same domain '
                         f'(got domains {[int(v) for v in y_ref]})')
    masks = masks_of(nets, x_src)
    s_ref = nets.style_encoder(x_ref, y_ref)
    last = None
    for i, j in pairs:
        interpolated = interpolate(nets, args, x_src, s_ref[i:i + 1], s_ref[j:j + 1], masks)
        slided = slide([x_ref[i:i + 1], x_ref[j:j + 1]])
        segment = tensor2ndarray255(torch.cat([slided, interpolated], dim=3))  # (T, 2H, W+32+B*W, 3)
        yield from segment
        last = segment[-1]
    for _ in range(LEN_TAIL):
        yield last


@torch.no_grad()
def latent_frames(nets, args, x_src, y_list, z_list, psi, generator=None):
    """The frames of video_latent, as uint8 (2H, B*W, 3) arrays: per domain, 31 frames for each consecutive pair of
    its psi-truncated latent styles; then the last frame 10 more times."""
    if len(z_list) < 2:
        raise ValueError(f'video_latent needs at least two latent codes per domain (got {len(z_list)})')
    device = x_src.device
    latent_dim = z_list[0].size(1)
    masks = masks_of(nets, x_src)
    last = None
    for y_trg in y_list:
        y_trg = y_trg.to(device)
        s_avg = average_style(nets, y_trg[0], latent_dim, generator=generator).repeat(x_src.size(0), 1)
        s_list = [torch.lerp(s_avg, nets.mapping_network(z.to(device), y_trg), psi) for z in z_list]
        for s_prev, s_next in zip(s_list[:-1], s_list[1:]):  # styles of different domains are not interpolated
            segment = tensor2ndarray255(interpolate(nets, args, x_src, s_prev, s_next, masks))
            yield from segment
            last = segment[-1]
    for _ in range(LEN_TAIL):
        yield last


def _with_progress(frames, total, fname, progress):
    return tqdm(frames, total=total, desc=os.path.basename(fname), unit='frame') if progress else frames


def video_ref(nets, args, x_src, x_ref, y_ref, fname, progress=False):
    """Reference-guided interpolation video: for consecutive references of the same domain, the style slides from
    one to the next. x_src (B, 3, H, W), x_ref (R, 3, H, W), y_ref (R,). Writes fname (mp4); returns the number of
    frames fed to ffmpeg. progress: a tqdm bar over the frames."""
    ffmpeg_exe = find_ffmpeg()  # fail before the work
    frames = ref_frames(nets, args, x_src, x_ref, y_ref)
    total = len(get_alphas()) * len(_pairs_of_same_domain(y_ref)) + LEN_TAIL
    return save_video(fname, _with_progress(frames, total, fname, progress), ffmpeg_exe=ffmpeg_exe)


def video_latent(nets, args, x_src, y_list, z_list, psi, fname, generator=None, progress=False):
    """Latent-guided interpolation video: per target domain y in y_list (each (B,) filled with one domain), the
    psi-truncated styles s = lerp(s_avg, F(z, y), psi) of the codes in z_list (each (B, latent_dim)) are visited in
    order. s_avg = mean of F over 10,000 random z (drawn with `generator`, a CPU torch.Generator, else the global
    RNG). Frames as video_ref's without the reference panel. Returns the number of frames fed to ffmpeg."""
    ffmpeg_exe = find_ffmpeg()
    frames = latent_frames(nets, args, x_src, y_list, z_list, psi, generator=generator)
    total = len(get_alphas()) * (len(z_list) - 1) * len(y_list) + LEN_TAIL
    return save_video(fname, _with_progress(frames, total, fname, progress), ffmpeg_exe=ffmpeg_exe)


def save_video(fname, frames, fps=FPS, vcodec='libx264', ffmpeg_exe=None):
    """Encodes uint8 frames (an iterable of H x W x 3 arrays, or a (T, H, W, 3) array) into fname: rgb24 frames in
    at fps, setpts=2*PTS (half speed), vcodec, yuv420p, fps out. Odd heights/widths get one edge row/column
    repeated (yuv420p needs even sizes). Streams frame by frame; returns the number of frames written."""
    import ffmpeg  # ffmpeg-python

    ffmpeg_exe = ffmpeg_exe or find_ffmpeg()
    os.makedirs(os.path.dirname(os.path.abspath(fname)), exist_ok=True)
    process, stderr_file, count = None, None, 0
    try:
        for frame in frames:
            frame = np.asarray(frame)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise ValueError(f'frames must be uint8 H x W x 3 arrays (got {frame.dtype} {frame.shape})')
            if frame.shape[0] % 2 or frame.shape[1] % 2:
                frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode='edge')
            if process is None:
                height, width = frame.shape[:2]
                stream = ffmpeg.input('pipe:', format='rawvideo', pix_fmt='rgb24', s=f'{width}x{height}',
                                      framerate=fps)
                stream = ffmpeg.filter(stream, 'setpts', '2*PTS')  # half-speed playback
                stream = ffmpeg.output(stream, fname, pix_fmt='yuv420p', vcodec=vcodec, r=fps)
                stream = ffmpeg.overwrite_output(stream).global_args('-hide_banner', '-loglevel', 'error')
                stderr_file = tempfile.TemporaryFile()
                process = subprocess.Popen(ffmpeg.compile(stream, cmd=ffmpeg_exe), stdin=subprocess.PIPE,
                                           stdout=subprocess.DEVNULL, stderr=stderr_file)
            elif frame.shape[:2] != (height, width):
                raise ValueError(f'frame {count} is {frame.shape[:2]}, the first was {(height, width)}')
            process.stdin.write(frame.tobytes())
            count += 1
        if process is None:
            raise ValueError(f'no frames to write to {fname}')
        process.stdin.close()
        returncode = process.wait()
    except BrokenPipeError:
        returncode = process.wait()
    except BaseException:
        if process is not None:
            process.kill()
            process.wait()
        raise
    finally:
        if stderr_file is not None:
            stderr_file.seek(0)
            message = stderr_file.read().decode(errors='replace')[-2000:]
            stderr_file.close()
    if returncode != 0:
        raise RuntimeError(f'ffmpeg ({ffmpeg_exe}) failed with exit code {returncode} writing {fname}:\n{message}')
    return count
