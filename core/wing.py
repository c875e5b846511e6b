"""The 98-landmark face alignment network (FAN, AdaptiveWingLoss) and its heatmap masks (SPEC section 2).

    fan = FAN(fname_pretrained='expr/checkpoints/wing.ckpt').to(device).eval()
    masks = fan.get_heatmap(x)      # x in [-1, 1] -> (mask_32, mask_64_128), each (N, 1, 256, 256) in [0, 1]
    landmarks = fan.get_landmark(x) # (N, 98, 2) in x's pixel coordinates (x, y)

    aligner = FaceAligner('expr/checkpoints/wing.ckpt', 'expr/checkpoints/celeba_lm_mean.npz', 256, device)
    x_aligned = aligner.align(x)    # (N, 3, H, W) in [-1, 1] -> (N, 3, 256, 256) in [-1, 1]
    align_faces(args, input_dir, output_dir, device)   # --mode align: every image of a folder

Face alignment = these landmarks + the geometry of core/align.py (which needs no network: the imports run one way).
"""
import os
from collections import namedtuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from munch import Munch
from PIL import Image

from core.align import DOWNLOAD_HINT, FaceGeometry, list_images
from core.machinery.distributed import resolve_device
from core.machinery.safe_load import load_torch_file


class AddCoords(nn.Module):
    """Appends x and y coordinate channels in [-1, 1] (and optionally the radius and two 'boundary' channels)."""

    def __init__(self, height=64, width=64, with_r=False, with_boundary=False):
        super().__init__()
        self.with_r = with_r
        self.with_boundary = with_boundary
        x_coords = torch.arange(height).unsqueeze(1).expand(height, width).float()
        y_coords = torch.arange(width).unsqueeze(0).expand(height, width).float()
        x_coords = (x_coords / (height - 1)) * 2 - 1
        y_coords = (y_coords / (width - 1)) * 2 - 1
        coords = torch.stack([x_coords, y_coords], dim=0)  # (2, H, W)
        if with_r:
            rr = torch.sqrt(x_coords ** 2 + y_coords ** 2)
            coords = torch.cat([coords, (rr / rr.max()).unsqueeze(0)], dim=0)
        # not persistent: the reference keeps them as plain attributes, so they are not in wing.ckpt
        self.register_buffer('coords', coords.unsqueeze(0), persistent=False)  # (1, 2 or 3, H, W)
        self.register_buffer('x_coords', x_coords, persistent=False)
        self.register_buffer('y_coords', y_coords, persistent=False)

    def forward(self, x, heatmap=None):
        coords = self.coords.expand(x.size(0), -1, -1, -1).to(x.dtype)
        if self.with_boundary and heatmap is not None:
            boundary = torch.clamp(heatmap[:, -1:], 0.0, 1.0)
            zero = torch.zeros_like(self.x_coords)
            xx = torch.where(boundary > 0.05, self.x_coords, zero)
            yy = torch.where(boundary > 0.05, self.y_coords, zero)
            coords = torch.cat([coords, xx, yy], dim=1)
        return torch.cat([x, coords], dim=1)


class CoordConv(nn.Module):
    def __init__(self, height, width, with_r, with_boundary, in_channels, first_one=False, **conv_kwargs):
        super().__init__()
        self.addcoords = AddCoords(height, width, with_r, with_boundary)
        in_channels += 2 + int(with_r) + (2 if with_boundary and not first_one else 0)
        self.conv = nn.Conv2d(in_channels=in_channels, **conv_kwargs)

    def forward(self, x, heatmap=None):
        ret = self.addcoords(x, heatmap)
        last_channel = ret[:, -2:]
        return self.conv(ret), last_channel


class ConvBlock(nn.Module):
    """Three pre-activated 3x3 stages of widths out/2, out/4, out/4, concatenated, plus the (projected) input."""

    def __init__(self, in_planes, out_planes):
        super().__init__()
        half, quarter = out_planes // 2, out_planes // 4
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, half, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, quarter, 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(quarter)
        self.conv3 = nn.Conv2d(quarter, quarter, 3, 1, 1, bias=False)
        self.downsample = None
        if in_planes != out_planes:
            self.downsample = nn.Sequential(nn.BatchNorm2d(in_planes), nn.ReLU(True),
                                            nn.Conv2d(in_planes, out_planes, 1, 1, bias=False))

    def forward(self, x):
        out1 = self.conv1(F.relu(self.bn1(x)))
        out2 = self.conv2(F.relu(self.bn2(out1)))
        out3 = self.conv3(F.relu(self.bn3(out2)))
        residual = x if self.downsample is None else self.downsample(x)
        return torch.cat((out1, out2, out3), 1) + residual


class HourGlass(nn.Module):
    def __init__(self, num_modules, depth, num_features, first_one=False):
        super().__init__()
        self.num_modules = num_modules
        self.depth = depth
        self.features = num_features
        self.coordconv = CoordConv(64, 64, True, True, 256, first_one,
                                   out_channels=256, kernel_size=1, stride=1, padding=0)
        self._generate_network(depth)

    def _generate_network(self, level):
        self.add_module(f'b1_{level}', ConvBlock(256, 256))
        self.add_module(f'b2_{level}', ConvBlock(256, 256))
        if level > 1:
            self._generate_network(level - 1)
        else:
            self.add_module(f'b2_plus_{level}', ConvBlock(256, 256))
        self.add_module(f'b3_{level}', ConvBlock(256, 256))

    def _forward(self, level, inp):
        up1 = self._modules[f'b1_{level}'](inp)
        low1 = self._modules[f'b2_{level}'](F.avg_pool2d(inp, 2, stride=2))
        if level > 1:
            low2 = self._forward(level - 1, low1)
        else:
            low2 = self._modules[f'b2_plus_{level}'](low1)
        low3 = self._modules[f'b3_{level}'](low2)
        return up1 + F.interpolate(low3, scale_factor=2, mode='nearest')

    def forward(self, x, heatmap):
        x, last_channel = self.coordconv(x, heatmap)
        return self._forward(self.depth, x), last_channel


class FAN(nn.Module):
    def __init__(self, num_modules=1, end_relu=False, num_landmarks=98, fname_pretrained=None, trust_pickle=False):
        super().__init__()
        self.num_modules = num_modules
        self.end_relu = end_relu
        self.conv1 = CoordConv(256, 256, True, False, in_channels=3, out_channels=64,
                               kernel_size=7, stride=2, padding=3)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = ConvBlock(64, 128)
        self.conv3 = ConvBlock(128, 128)
        self.conv4 = ConvBlock(128, 256)
        self.add_module('m0', HourGlass(1, 4, 256, first_one=True))
        self.add_module('top_m_0', ConvBlock(256, 256))
        self.add_module('conv_last0', nn.Conv2d(256, 256, 1, 1, 0))
        self.add_module('bn_end0', nn.BatchNorm2d(256))
        self.add_module('l0', nn.Conv2d(256, num_landmarks + 1, 1, 1, 0))
        if fname_pretrained is not None:
            self.load_pretrained_weights(fname_pretrained, trust_pickle)

    def load_pretrained_weights(self, fname, trust_pickle=False):
        """Loads a wing.ckpt (a dict with 'state_dict'). Keys we do not know are ignored; missing ones are an error.
        Read with weights_only=True: a file that needs full unpickling is an error unless trust_pickle."""
        if not os.path.isfile(fname):
            raise FileNotFoundError(
                f'FAN weights not found: {fname}. They are needed when --w_hpf > 0. '
                f'Get them with `bash scripts/download.sh wing`, or pass --wing_path.')
        checkpoint = load_torch_file(fname, '--wing_path', trust_pickle)
        weights = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(weights, dict):
            raise ValueError(f'{fname} is not a FAN checkpoint (expected a dict with a "state_dict" entry)')
        weights = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in weights.items()}
        own = self.state_dict()
        missing = [k for k in own if k not in weights]
        if missing:
            raise KeyError(f'{fname} lacks {len(missing)} FAN parameters, e.g. {missing[:5]}: '
                           f'is it the wing.ckpt of StarGAN v2?')
        bad = [f'{k}: file {tuple(weights[k].shape)} vs model {tuple(v.shape)}'
               for k, v in own.items() if tuple(weights[k].shape) != tuple(v.shape)]
        if bad:
            raise ValueError(f'{fname}: FAN parameter shapes differ: {bad[:5]}')
        self.load_state_dict({k: weights[k] for k in own})

    def forward(self, x):
        x, _ = self.conv1(x)
        x = F.relu(self.bn1(x), True)
        x = F.avg_pool2d(self.conv2(x), 2, stride=2)
        x = self.conv4(self.conv3(x))
        ll, boundary_channel = self.m0(x, None)
        ll = self.top_m_0(ll)
        ll = F.relu(self.bn_end0(self.conv_last0(ll)), True)
        tmp_out = self.l0(ll)
        if self.end_relu:
            tmp_out = F.relu(tmp_out)
        return [tmp_out], [boundary_channel]

    @torch.no_grad()
    def get_heatmap(self, x, b_preprocess=True):
        """x in [-1, 1] -> the two masks (N, 1, 256, 256) in [0, 1]; with b_preprocess=False the raw 98 heatmaps (64x64)."""
        x = F.interpolate(x, size=256, mode='bilinear')
        outputs, _ = self(x * 0.5 + 0.5)
        heatmaps = outputs[-1][:, :-1]  # drop the boundary channel
        if b_preprocess:
            scale_factor = x.size(2) // heatmaps.size(2)
            heatmaps = F.interpolate(heatmaps, scale_factor=scale_factor, mode='bilinear', align_corners=True)
            heatmaps = preprocess(heatmaps)
        return heatmaps

    @torch.no_grad()
    def get_landmark(self, x):
        """(N, 98, 2) landmark coordinates (x, y) in the pixel units of x."""
        heatmaps = self.get_heatmap(x, b_preprocess=False)
        # the reference's integer ratio x.size(2) // 64 is 0 below 64 px; the true ratio equals it from 64 px up
        return get_preds_fromhm(heatmaps.float()) * (x.size(2) / heatmaps.size(2))


# ---------------------------------------------------------------------------------------------------------------------
# heatmap post-processing

index_map = Munch(chin=(8, 25), eyebrows=(33, 51), eyebrowsedges=(33, 46), nose=(51, 55), nostrils=(55, 60),
                  eyes=(60, 76), lipedges=(76, 82), lipupper=(77, 82), liplower=(83, 88), lipinner=(88, 96))
OPPAIR = namedtuple('OPPAIR', ['shift', 'resize'])


def normalize(x, eps=1e-6):
    """Min-max normalisation of each (sample, channel) map."""
    N, C, H, W = x.shape
    x_ = x.reshape(N * C, -1)
    max_val = x_.max(dim=1, keepdim=True)[0]
    min_val = x_.min(dim=1, keepdim=True)[0]
    return ((x_ - min_val) / (max_val - min_val + eps)).view(N, C, H, W)


def truncate(x, thres=0.1):
    return torch.where(x < thres, torch.zeros_like(x), x)


def resize(x, p=2):
    """'resize' in the reference: sharpens a heatmap by raising it to a power."""
    return x ** p


def shift(x, n):
    """Cyclic vertical shift: content moves up by n rows (down for n < 0)."""
    return torch.roll(x, shifts=-n, dims=2)


def preprocess(x):
    """98 heatmaps (N, 98, H, W) -> (mask 1, mask 2), each (N, 1, H, W) clamped to [0, 1]."""
    H = x.size(2)
    x = normalize(truncate(x)).clone()
    sw = H // 256
    operations = Munch(chin=OPPAIR(0, 3), eyebrows=OPPAIR(-7 * sw, 2), nostrils=OPPAIR(8 * sw, 4),
                       lipupper=OPPAIR(-8 * sw, 4), liplower=OPPAIR(8 * sw, 4), lipinner=OPPAIR(-2 * sw, 3))
    for part, ops in operations.items():
        start, end = index_map[part]
        x[:, start:end] = resize(shift(x[:, start:end], ops.shift), ops.resize)

    zero_out = torch.cat([torch.arange(0, index_map.chin[0]),
                          torch.arange(index_map.chin[1], 33),
                          torch.tensor([index_map.eyebrowsedges[0], index_map.eyebrowsedges[1],
                                        index_map.lipedges[0], index_map.lipedges[1]])]).to(x.device)
    x[:, zero_out] = 0

    start, end = index_map.nose
    x[:, start + 1:end] = shift(x[:, start + 1:end], 4 * sw)

    start, end = index_map.eyes
    x[:, start:end] = resize(shift(x[:, start:end], -8), 3) + shift(x[:, start:end], -24)

    # second-level mask: eyes and nose only (no face line, mouth or eyebrows)
    x2 = x.clone()
    x2[:, index_map.chin[0]:index_map.chin[1]] = 0
    x2[:, index_map.lipedges[0]:index_map.lipinner[1]] = 0
    x2[:, index_map.eyebrows[0]:index_map.eyebrows[1]] = 0

    x = torch.nan_to_num(x.sum(dim=1, keepdim=True), nan=0.0)
    x2 = torch.nan_to_num(x2.sum(dim=1, keepdim=True), nan=0.0)
    return x.clamp_(0, 1), x2.clamp_(0, 1)


def get_preds_fromhm(hm):
    """Heatmaps (N, C, H, W) -> (N, C, 2) coordinates: 1-based argmax nudged a quarter pixel toward the larger
    neighbour, minus 0.5 (the reference's convention)."""
    N, C, H, W = hm.shape
    idx = hm.reshape(N, C, H * W).argmax(dim=2)
    px = idx % W  # 0-based
    py = idx // W
    # neighbours, clamped at the border (where the nudge is not applied anyway)
    flat = hm.reshape(N, C, H * W)

    def at(yy, xx):
        return flat.gather(2, (yy.clamp(0, H - 1) * W + xx.clamp(0, W - 1)).unsqueeze(2)).squeeze(2)

    dx = torch.sign(at(py, px + 1) - at(py, px - 1))
    dy = torch.sign(at(py + 1, px) - at(py - 1, px))
    inside = ((px > 0) & (px < W - 1) & (py > 0) & (py < H - 1)).to(hm.dtype)
    preds = torch.stack([px + 1 + 0.25 * dx * inside, py + 1 + 0.25 * dy * inside], dim=2).to(hm.dtype)
    return preds - 0.5


# ---------------------------------------------------------------------------------------------------------------------
# face alignment: the FAN's landmarks + core/align.py's geometry

class FaceAligner(FaceGeometry):
    def __init__(self, fname_wing, fname_celeba_mean, output_size, device, trust_pickle=False):
        if not os.path.isfile(fname_wing):
            raise FileNotFoundError(f'FAN weights not found: {fname_wing}. {DOWNLOAD_HINT}, or pass --wing_path.')
        super().__init__(fname_celeba_mean, output_size)
        self.device = torch.device(device)
        self.fan = FAN(fname_pretrained=fname_wing, trust_pickle=trust_pickle).to(self.device).eval()

    @torch.no_grad()
    def get_landmarks(self, x):
        """x (N, 3, H, W) in [-1, 1] -> (N, 98, 2) float64 landmarks (x, y) in x's pixel units."""
        return self.fan.get_landmark(x.to(self.device)).cpu().double().numpy()

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


def align_faces(args, input_dir, output_dir, device=None):
    """Aligns every image of input_dir (sorted) and saves it under the same name in output_dir.

    Uses args.img_size (input resize and output size), args.wing_path and args.lm_path; device: the caller's (default:
    --device). Returns the written paths.
    """
    from core.config import complete_args
    args = complete_args(args)  # a public entry point: args may come from the reference's own parser
    if not os.path.isdir(input_dir):
        raise FileNotFoundError(f'Input folder not found: {input_dir} (--inp_dir)')
    fnames = list_images(input_dir)
    if not fnames:
        raise FileNotFoundError(f'No images (png/jpg/jpeg) in {input_dir} (--inp_dir)')
    if device is None:
        device = resolve_device(args.device)
    aligner = FaceAligner(args.wing_path, args.lm_path, args.img_size, device, trust_pickle=args.trust_pickle)
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
