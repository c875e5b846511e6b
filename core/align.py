"""Face alignment for `--mode align` (SPEC section 2): crop and rotate a face the way CelebA-HQ faces are.

    python main.py --mode align --inp_dir assets/representative/custom/female \
                   --out_dir assets/representative/celeba_hq/src/female

    aligner = FaceAligner('expr/checkpoints/wing.ckpt', 'expr/checkpoints/celeba_lm_mean.npz', 256, device)
    x_aligned = aligner.align(x)   # (N, 3, H, W) in [-1, 1] -> (N, 3, 256, 256) in [-1, 1]

Per image, as the reference does it: 98 landmarks from the FAN (core/wing.py); the image mirror-padded by half its
size with a blurred border; a similarity transform (rotation from the eye/mouth axis, isotropic scale from the eyes
and mouth corners, translation between the landmark means) onto the mean CelebA-HQ landmarks (`celeba_lm_mean.npz`,
key 'mean', 98x2 at 256 px); a high-quality warp; the top-left output_size square is the result.

Differences from the reference (which used OpenCV and scikit-image; here torch, PIL, numpy and scipy only):
- the warp is PIL's bicubic instead of OpenCV's Lanczos-4, with the same pixel-centre convention (integer
  coordinates at pixel centres), so the geometry is the reference's and only the interpolation kernel differs;
- the blurred border uses scipy's gaussian_filter (what scikit-image calls underneath) and a bilinear resize
  equivalent to OpenCV's INTER_LINEAR;
- the mean landmarks are scaled by output_size / 256 instead of output_size // 256, which is the same at 256 and
  512 px and keeps smaller sizes from collapsing every landmark onto 0;
- the image is not round-tripped through a [-1, 1] tensor and truncated back to uint8 before warping.
"""
import os

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter

from core.wing import FAN

IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg')
DOWNLOAD_HINT = 'Get it with `bash scripts/download.sh wing` (it fetches wing.ckpt and celeba_lm_mean.npz)'

# landmark indices of the 98-point (WFLW) layout
LEFT_EYE = list(range(60, 68)) + [96]
RIGHT_EYE = list(range(68, 76)) + [97]
MOUTH_LEFT, MOUTH_RIGHT = 76, 82
SCALE_INDICES = [96, 97, 76, 82]  # eye centres and mouth corners


# ---------------------------------------------------------------------------------------------------------------------
# the similarity transform (homogeneous 3x3 matrices acting on column vectors (x, y, 1))

def points2T(points, direction):
    """Translation taking the mean of points to the origin ('from') or the origin to the mean ('to')."""
    T = np.eye(3)
    T[:2, 2] = (-1 if direction == 'from' else 1) * points.mean(axis=0)
    return T


def landmarks2eyes(landmarks):
    return landmarks[LEFT_EYE].mean(axis=0), landmarks[RIGHT_EYE].mean(axis=0)


def landmarks2mouthends(landmarks):
    return landmarks[MOUTH_LEFT], landmarks[MOUTH_RIGHT]


def rotate90(vec):
    x, y = vec
    return np.array([y, -x])


def landmarks2xaxis(landmarks):
    """Unit x-axis of a face: eye-to-eye vector combined with the eye-mouth axis turned 90 degrees (as in PGGAN)."""
    eye_left, eye_right = landmarks2eyes(landmarks)
    mouth_left, mouth_right = landmarks2mouthends(landmarks)
    xp = eye_right - eye_left
    yp = 0.5 * (eye_left + eye_right) - 0.5 * (mouth_left + mouth_right)
    xaxis = xp - rotate90(yp)
    return xaxis / np.linalg.norm(xaxis)


def vecs2R(vec_x, vec_y):
    """Rotation taking the direction of vec_x onto that of vec_y."""
    vec_x = vec_x / np.linalg.norm(vec_x)
    vec_y = vec_y / np.linalg.norm(vec_y)
    c = np.clip(np.dot(vec_x, vec_y), -1.0, 1.0)  # rounding can push |c| past 1 and sqrt to NaN
    cross = vec_x[0] * vec_y[1] - vec_x[1] * vec_y[0]
    s = np.sqrt(1 - c * c) * np.sign(cross)
    return np.array(((c, -s, 0), (s, c, 0), (0, 0, 1)))


def landmarks2S(x, y):
    """Isotropic scale from x to y: mean over eyes and mouth corners of their distance ratios to the landmark means."""
    x_norms = np.linalg.norm(x - x.mean(axis=0), axis=1)
    y_norms = np.linalg.norm(y - y.mean(axis=0), axis=1)
    scale = (y_norms / x_norms)[SCALE_INDICES].mean()
    S = np.eye(3)
    S[0, 0] = S[1, 1] = scale
    return S


# ---------------------------------------------------------------------------------------------------------------------
# image helpers (numpy HxWx3 float arrays in [0, 255])

def _resize_linear(img, size):
    """Bilinear resize with half-pixel centres and no antialiasing (what OpenCV's INTER_LINEAR does). size = (H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64)).permute(2, 0, 1).unsqueeze(0)
    t = torch.nn.functional.interpolate(t, size=size, mode='bilinear', align_corners=False)
    return t.squeeze(0).permute(1, 2, 0).numpy()


def pad_mirror(img, landmarks):
    """Mirror-pads img (H, W, 3) by half its size on each side and fades the mirrored part into a blurred copy.

    Returns the padded float64 image (in the value range of img) and the landmarks moved with it (a new array).
    The original image sits untouched in the centre: the blend weight is 1 there.
    """
    H, W, _ = img.shape
    img = np.pad(np.asarray(img, dtype=np.float64), ((H // 2, H // 2), (W // 2, W // 2), (0, 0)), mode='reflect')
    # blurred copy: downsize to the original size, gaussian of sigma H//100 per channel, back to the padded size
    small = _resize_linear(img, (H, W)) / 255
    sigma = H // 100
    if sigma > 0:
        small = np.stack([gaussian_filter(small[..., c], sigma, mode='nearest', truncate=4.0)
                          for c in range(small.shape[2])], axis=2)
    blurred = _resize_linear(small, img.shape[:2]) * 255

    Hp, Wp, _ = img.shape
    # the reference divides both axes by H//4 (images here are square, so Wp//4 is the same number)
    weight_y = np.clip(np.arange(Hp) / (Hp // 4), 0, 1)
    weight_x = np.clip(np.arange(Wp) / (Wp // 4), 0, 1)
    weight_y = np.minimum(weight_y, weight_y[::-1])
    weight_x = np.minimum(weight_x, weight_x[::-1])
    weight = (np.minimum(weight_y[:, None], weight_x[None, :]) ** 4)[..., None]  # (Hp, Wp, 1)
    img = img * weight + blurred * (1 - weight)
    landmarks = np.asarray(landmarks, dtype=np.float64) + np.array([Wp // 4, Hp // 4])
    return img, landmarks


def warp_image(img, matrix, size):
    """Warps img (H, W, C) by the 3x3 matrix (source pixel -> output pixel, integer coordinates at pixel centres,
    as OpenCV's warpPerspective) onto a size=(H_out, W_out) canvas. Outside the image is 0. Returns float64."""
    # PIL places pixel centres at +0.5 and asks for the output -> input map: conjugate by the half-pixel shift
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    inv = np.linalg.inv(half @ matrix @ np.linalg.inv(half))
    inv = inv / inv[2, 2]
    coeffs = tuple(inv.flatten()[:8])
    channels = []
    for c in range(img.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32))  # mode 'F': no rounding
        warped = channel.transform((size[1], size[0]), Image.Transform.PERSPECTIVE, coeffs,
                                   resample=Image.Resampling.BICUBIC)
        channels.append(np.asarray(warped, dtype=np.float64))
    return np.stack(channels, axis=2)


def load_mean_landmarks(fname):
    """The 98x2 mean CelebA-HQ landmarks (at 256 px) from celeba_lm_mean.npz."""
    if not os.path.isfile(fname):
        raise FileNotFoundError(f'Mean face landmarks not found: {fname}. {DOWNLOAD_HINT}, or pass --lm_path.')
    with np.load(fname) as data:
        if 'mean' not in data:
            raise KeyError(f'{fname} has no "mean" entry (keys: {list(data.keys())}): is it celeba_lm_mean.npz?')
        mean = np.asarray(data['mean'], dtype=np.float64)
    if mean.shape != (98, 2):
        raise ValueError(f'{fname}: "mean" has shape {mean.shape}, expected (98, 2)')
    return mean


# ---------------------------------------------------------------------------------------------------------------------

class FaceAligner:
    def __init__(self, fname_wing, fname_celeba_mean, output_size, device='cpu'):
        if not os.path.isfile(fname_wing):
            raise FileNotFoundError(f'FAN weights not found: {fname_wing}. {DOWNLOAD_HINT}, or pass --wing_path.')
        self.device = torch.device(device)
        self.fan = FAN(fname_pretrained=fname_wing).to(self.device).eval()
        self.output_size = output_size
        self.ref_landmarks = load_mean_landmarks(fname_celeba_mean) * (output_size / 256)  # (98, 2)
        self.xaxis_ref = landmarks2xaxis(self.ref_landmarks)

    @torch.no_grad()
    def get_landmarks(self, x):
        """x (N, 3, H, W) in [-1, 1] -> (N, 98, 2) float64 landmarks (x, y) in x's pixel units."""
        return self.fan.get_landmark(x.to(self.device)).cpu().double().numpy()

    def landmarks2mat(self, landmarks):
        """3x3 similarity matrix taking the (98, 2) landmarks onto the mean face: T_ref . S . R . T_origin."""
        landmarks = np.asarray(landmarks, dtype=np.float64)
        T_origin = points2T(landmarks, 'from')
        R = vecs2R(landmarks2xaxis(landmarks), self.xaxis_ref)
        S = landmarks2S(landmarks, self.ref_landmarks)
        T_ref = points2T(self.ref_landmarks, 'to')
        return T_ref @ S @ R @ T_origin

    def align_image(self, img, landmarks):
        """img (H, W, 3) in [0, 255] with its (98, 2) landmarks -> (output_size, output_size, 3) float64 in [0, 255]
        (not clipped). The reference warps onto a canvas of max(padded size, output_size) and keeps its top-left
        output_size square, which is the same as warping straight onto that square."""
        padded, landmarks = pad_mirror(img, landmarks)
        with np.errstate(divide='ignore', invalid='ignore'):
            matrix = self.landmarks2mat(landmarks)
        if not np.all(np.isfinite(matrix)):
            raise ValueError('cannot align: the eye and mouth landmarks coincide (no face found?)')
        return warp_image(padded, matrix, (self.output_size, self.output_size))

    def align_pil(self, image):
        """An RGB PIL image (any size) -> the aligned PIL image (output_size square), as --mode align writes it.
        Resized to a square first, as the reference's loader does; ValueError when it cannot be aligned."""
        # PIL bilinear resize, as torchvision's Resize on a PIL image in the reference
        image = image.resize((self.output_size, self.output_size), Image.Resampling.BILINEAR)
        img_np = np.asarray(image, dtype=np.float64)  # (H, W, 3) in [0, 255]
        x = torch.from_numpy(img_np / 255 * 2 - 1).permute(2, 0, 1).unsqueeze(0).float()
        aligned = self.align_image(img_np, self.get_landmarks(x)[0])
        return Image.fromarray(np.clip(np.floor(aligned + 0.5), 0, 255).astype(np.uint8))  # rounding, as save_image

    def align(self, imgs):
        """imgs (N, 3, H, W) in [-1, 1] -> (N, 3, output_size, output_size) in [-1, 1], on imgs' device."""
        landmarks = self.get_landmarks(imgs)
        out = []
        for img, lm in zip(imgs, landmarks):
            img_np = (img.detach().permute(1, 2, 0).cpu().double().numpy() * 0.5 + 0.5) * 255
            aligned = self.align_image(img_np, lm)
            out.append(torch.from_numpy(aligned).permute(2, 0, 1).float() / 255 * 2 - 1)
        return torch.stack(out).clamp_(-1, 1).to(imgs.device)


def list_images(input_dir):
    """Sorted image file names (png/jpg/jpeg, any case) directly in input_dir."""
    return sorted(f for f in os.listdir(input_dir)
                  if f.lower().endswith(IMG_EXTENSIONS) and os.path.isfile(os.path.join(input_dir, f)))


def _resolve_device(args):
    device = args.get('device', None) if hasattr(args, 'get') else getattr(args, 'device', None)
    if device is None or str(device) == 'auto':  # main.py normally resolves it; this is what --device auto means
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return torch.device(device)


def align_faces(args, input_dir, output_dir, device=None):
    """Aligns every image of input_dir (sorted) and saves it under the same name in output_dir.

    Uses args.img_size (input resize and output size), args.wing_path and args.lm_path. Returns the written paths.
    """
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f'Input folder not found: {input_dir} (--inp_dir)')
    fnames = list_images(input_dir)
    if not fnames:
        raise FileNotFoundError(f'No images (png/jpg/jpeg) in {input_dir} (--inp_dir)')
    device = torch.device(device) if device is not None else _resolve_device(args)
    aligner = FaceAligner(args.wing_path, args.lm_path, args.img_size, device)
    os.makedirs(output_dir, exist_ok=True)

    written = []
    for fname in fnames:
        image = Image.open(os.path.join(input_dir, fname)).convert('RGB')
        try:
            out = aligner.align_pil(image)
        except ValueError as e:
            raise ValueError(f'{os.path.join(input_dir, fname)}: {e}') from e
        path = os.path.join(output_dir, fname)
        out.save(path)
        written.append(path)
        print(f'Saved the aligned image to {path}')
    return written
