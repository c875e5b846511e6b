"""LPIPS (v0.1, AlexNet) as the reference computes it (SPEC section 6), with the model built once.

    value = calculate_lpips_given_images([x1, x2, ..., x10])   # each (N, 3, H, W) in [-1, 1]; mean pairwise LPIPS
    lpips = load_lpips(device)                               # LPIPS module; lpips(x, y) -> (N,) distances

LPIPS(x, y) = Σ_layers mean_{h,w} Σ_c w_c (x̂_c − ŷ_c)², where x̂ are the outputs of AlexNet's five ReLUs for the input
shifted by (−.030, −.088, −.188) and scaled by (.458, .448, .450), each unit-normalised over channels, and w are the
v0.1 linear weights that the `lpips` package ships (the same the reference ships). No resizing: the images go in at
their own size, as in the reference.
"""
import os

import torch
import torch.nn as nn
from torchvision import models

from metrics.weights import ALEXNET, file_signature, load_strict, resolve_weights


def lpips_linear_weights_path():
    import lpips  # only for the file it ships
    return os.path.join(os.path.dirname(lpips.__file__), 'weights', 'v0.1', 'alex.pth')


def normalize(x, eps=1e-10):
    """Unit length over channels: the reference's x·rsqrt(Σx² + eps) (the lpips package: x / (√Σx² + eps))."""
    return x * torch.rsqrt(torch.sum(x ** 2, dim=1, keepdim=True) + eps)


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        # torchvision's AlexNet up to its fifth ReLU (the last max-pool does not contribute)
        self.features = models.alexnet(weights=None).features[:12]
        self.relu_ids = [i for i, m in enumerate(self.features) if isinstance(m, nn.ReLU)]  # 1, 4, 7, 9, 11
        channels = [self.features[i - 1].out_channels for i in self.relu_ids]
        self.lin = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in channels])
        self.register_buffer('shift', torch.tensor([-.030, -.088, -.188]).view(1, 3, 1, 1))
        self.register_buffer('scale', torch.tensor([.458, .448, .450]).view(1, 3, 1, 1))

    def load_weights(self, alexnet_path, lin_path):
        alexnet = load_strict(models.alexnet(weights=None), alexnet_path)
        self.features.load_state_dict(alexnet.features[:12].state_dict())
        lin = torch.load(lin_path, map_location='cpu', weights_only=True)  # lin{k}.model.1.weight, (1, C, 1, 1)
        keys = [f'lin{k}.model.1.weight' for k in range(len(self.lin))]
        if sorted(lin) != sorted(keys):
            raise RuntimeError(f'{lin_path}: expected the LPIPS v0.1 keys {keys}, found {sorted(lin)}')
        with torch.no_grad():
            for p, k in zip(self.lin, keys):
                p.copy_(lin[k])
        return self

    def feature_maps(self, x):
        """The five unit-normalised ReLU outputs of (N, 3, H, W) images in [-1, 1]."""
        x = (x - self.shift) / self.scale
        fmaps = []
        for i, layer in enumerate(self.features):
            x = layer(x)  # the ReLUs are in place; what they return is not modified afterwards
            if i in self.relu_ids:
                fmaps.append(normalize(x))
        return fmaps

    @staticmethod
    def distance(fmaps_x, fmaps_y, lin):
        """(N,) LPIPS from feature maps: Σ_layers spatial mean of the weighted squared differences."""
        d = 0
        for fx, fy, w in zip(fmaps_x, fmaps_y, lin):
            d = d + ((fx - fy) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
        return d

    def forward(self, x, y):
        return self.distance(self.feature_maps(x), self.feature_maps(y), self.lin)


_lpips_cache = {}


def load_lpips(device='cpu', alexnet_weights=None):
    """LPIPS in eval mode on device; built once per (device, weights file) and reused."""
    alexnet_path = resolve_weights(ALEXNET, alexnet_weights)
    lin_path = lpips_linear_weights_path()
    key = (str(torch.device(device)), *file_signature(alexnet_path), *file_signature(lin_path))
    if key not in _lpips_cache:
        _lpips_cache.clear()
        model = LPIPS().load_weights(alexnet_path, lin_path).eval().requires_grad_(False)
        _lpips_cache[key] = model.to(device)
    return _lpips_cache[key]


@torch.inference_mode()
def calculate_lpips_given_images(group_of_images, alexnet_weights=None, max_batch=None):
    """Mean over all pairs i < j of the batch-mean LPIPS between group_of_images[i] and [j] (a Python float).

    Each image goes through AlexNet once (the reference runs every pair, both sides, through the network); the
    features of the whole group are computed in one forward, or in chunks of max_batch images."""
    model = load_lpips(group_of_images[0].device, alexnet_weights)
    k, n = len(group_of_images), group_of_images[0].size(0)
    x = torch.cat(group_of_images)  # (K·N, 3, H, W)
    chunks = [x] if not max_batch else x.split(max_batch)
    fmaps = [torch.cat(f) for f in zip(*[model.feature_maps(c) for c in chunks])]  # per layer (K·N, C, h, w)
    fmaps = [f.view(k, n, *f.shape[1:]) for f in fmaps]
    values = [model.distance([f[i] for f in fmaps], [f[j] for f in fmaps], model.lin).mean()
              for i in range(k - 1) for j in range(i + 1, k)]
    return torch.stack(values).mean().item()
