"""StarGAN v2 networks (SPEC section 1), parameter for parameter the reference's.

    from core.model import build_model
    nets, nets_ema = build_model(args)     # Munch(generator, mapping_network, style_encoder, discriminator[, fan])
    s = nets.mapping_network(z, y)         # (N, style_dim)
    x_fake = nets.generator(x, s, masks)   # (N, 3, H, W) in [-1, 1] range (unbounded)

State-dict names and shapes follow ../shared/spec/state_dict_schema.json, so the authors' checkpoints load as they are.
The only additions are optional keyword arguments for narrow networks (`dim_in`, `hidden_dim`); their defaults give
the reference's widths; and the generator variants of `--skip unet/none` (SkipVariantGenerator, docs/skip_study.md),
which keep every shared name and shape.
"""
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from munch import Munch


def _default_dim_in(img_size):
    return 2 ** 14 // img_size


def _num_halvings(img_size):
    n = int(round(math.log2(img_size)))
    if 2 ** n != img_size:
        raise ValueError(f'img_size must be a power of two (got {img_size}); see --img_size')
    return n


class ResBlk(nn.Module):
    """Pre-activation residual block: [IN] LReLU conv3 [pool] [IN] LReLU conv3, added to a (projected, pooled) shortcut."""

    def __init__(self, dim_in, dim_out, actv=nn.LeakyReLU(0.2), normalize=False, downsample=False):
        super().__init__()
        self.actv = actv
        self.normalize = normalize
        self.downsample = downsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_in, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        if normalize:
            self.norm1 = nn.InstanceNorm2d(dim_in, affine=True)
            self.norm2 = nn.InstanceNorm2d(dim_in, affine=True)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x):
        if self.learned_sc:
            x = self.conv1x1(x)
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        return x

    def _residual(self, x):
        if self.normalize:
            x = self.norm1(x)
        x = self.conv1(self.actv(x))
        if self.downsample:
            x = F.avg_pool2d(x, 2)
        if self.normalize:
            x = self.norm2(x)
        return self.conv2(self.actv(x))

    def forward(self, x):
        return (self._shortcut(x) + self._residual(x)) / math.sqrt(2)  # unit variance


class AdaIN(nn.Module):
    """out = (1 + gamma(s)) * IN(x) + beta(s)."""

    def __init__(self, style_dim, num_features):
        super().__init__()
        self.norm = nn.InstanceNorm2d(num_features, affine=False)
        self.fc = nn.Linear(style_dim, num_features * 2)

    def forward(self, x, s):
        h = self.fc(s)[:, :, None, None]  # (N, 2C, 1, 1)
        gamma, beta = torch.chunk(h, chunks=2, dim=1)
        return (1 + gamma) * self.norm(x) + beta


class AdainResBlk(nn.Module):
    """Decoder block. With w_hpf > 0 the shortcut is not added (the high-pass skips carry the detail instead),
    but its conv1x1 still exists, because the authors' checkpoints contain it."""

    def __init__(self, dim_in, dim_out, style_dim=64, w_hpf=0, actv=nn.LeakyReLU(0.2), upsample=False):
        super().__init__()
        self.w_hpf = w_hpf
        self.actv = actv
        self.upsample = upsample
        self.learned_sc = dim_in != dim_out
        self.conv1 = nn.Conv2d(dim_in, dim_out, 3, 1, 1)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, 1, 1)
        self.norm1 = AdaIN(style_dim, dim_in)
        self.norm2 = AdaIN(style_dim, dim_out)
        if self.learned_sc:
            self.conv1x1 = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=False)

    def _shortcut(self, x):
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode='nearest')
        if self.learned_sc:
            x = self.conv1x1(x)
        return x

    def _residual(self, x, s):
        x = self.actv(self.norm1(x, s))
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode='nearest')
        x = self.conv1(x)
        x = self.actv(self.norm2(x, s))
        return self.conv2(x)

    def forward(self, x, s):
        out = self._residual(x, s)
        if self.w_hpf == 0:
            out = (out + self._shortcut(x)) / math.sqrt(2)
        return out


class HighPass(nn.Module):
    """Fixed 3x3 Laplacian-like filter / w_hpf, applied depthwise. `filter` is a buffer (saved as hpf.filter)."""

    def __init__(self, w_hpf, device=None):  # device: kept for the reference's signature; buffers follow .to()
        super().__init__()
        self.w_hpf = w_hpf
        self.register_buffer('filter', self.make_filter(w_hpf, device))

    @staticmethod
    def make_filter(w_hpf, device=None):
        return torch.tensor([[-1, -1, -1], [-1, 8., -1], [-1, -1, -1]], device=device) / w_hpf

    def forward(self, x):
        # a contiguous (C, 1, 3, 3) weight, as the reference builds it: the conv kernel chosen depends on the layout
        weight = self.filter.to(x.dtype)[None, None].repeat(x.size(1), 1, 1, 1)
        return F.conv2d(x, weight, padding=1, groups=x.size(1))


class Generator(nn.Module):
    # The reference hard-codes the resolutions whose encoder features pass through the masked high-pass skips.
    # They are kept (the released CelebA-HQ model was trained with them at 256 px); at 64 or 128 px the skips
    # simply include the full resolution, at 512 px the 256 level has none.
    HPF_SIZES = (32, 64, 128)

    def __init__(self, img_size=256, style_dim=64, max_conv_dim=512, w_hpf=1, dim_in=None):
        super().__init__()
        dim_in = dim_in or _default_dim_in(img_size)
        self.img_size = img_size
        self.w_hpf = w_hpf
        self.from_rgb = nn.Conv2d(3, dim_in, 3, 1, 1)
        self.encode = nn.ModuleList()
        self.decode = nn.ModuleList()
        self.to_rgb = nn.Sequential(
            nn.InstanceNorm2d(dim_in, affine=True),
            nn.LeakyReLU(0.2),
            nn.Conv2d(dim_in, 3, 1, 1, 0))

        # down/up-sampling blocks
        repeat_num = _num_halvings(img_size) - 4
        if w_hpf > 0:
            repeat_num += 1
        dim_out = dim_in
        for _ in range(repeat_num):
            dim_out = min(dim_in * 2, max_conv_dim)
            self.encode.append(ResBlk(dim_in, dim_out, normalize=True, downsample=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_in, style_dim, w_hpf=w_hpf, upsample=True))  # stack-like
            dim_in = dim_out

        # bottleneck blocks
        for _ in range(2):
            self.encode.append(ResBlk(dim_out, dim_out, normalize=True))
            self.decode.insert(0, AdainResBlk(dim_out, dim_out, style_dim, w_hpf=w_hpf))

        if w_hpf > 0:
            self.hpf = HighPass(w_hpf)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The authors' released CelebA-HQ checkpoint predates the hpf.filter buffer: rebuild it from w_hpf.
        key = prefix + 'hpf.filter'
        if self.w_hpf > 0 and 'hpf' in self._modules and key not in state_dict:
            state_dict[key] = HighPass.make_filter(self.w_hpf)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x, s, masks=None):
        x = self.from_rgb(x)
        cache = {}
        for block in self.encode:
            if masks is not None and x.size(2) in self.HPF_SIZES:
                cache[x.size(2)] = x
            x = block(x)
        for block in self.decode:
            x = block(x, s)
            if masks is not None and x.size(2) in self.HPF_SIZES:
                mask = masks[0] if x.size(2) == 32 else masks[1]
                mask = F.interpolate(mask, size=x.size(2), mode='bilinear')
                x = x + self.hpf(mask * cache[x.size(2)])
        return self.to_rgb(x)


SKIPS = ('hpf', 'unet', 'none')


class SkipVariantGenerator(Generator):
    """The generator of --skip unet / none: the reference's blocks and names (the depth and the decoder shortcuts
    still follow w_hpf), only the encoder-to-decoder connection differs.

    - none: no connection at all, whatever w_hpf (no high-pass skips, no FAN); masks are ignored.
    - unet: at every resolution r the decoder upsamples to (r = 2·smallest ... img_size), the encoder's input feature
      map of resolution r (the tensor entering the downsampling block of that size; from_rgb's output at full size)
      goes through a learned 1x1 conv (no bias, C -> C, He init) and is added to the output of that decoder block:
      x = (x + skip_conv[r](enc_r)) / √2 (unit variance, as the residual blocks). New parameters: skip_conv.{r}.weight.

    The variant is saved in the state dict (`_extra_state` = {'skip': ...}), so that loading a file of another
    variant is an error naming --skip; the hpf generator's state dict stays the reference's.
    """

    def __init__(self, img_size=256, style_dim=64, max_conv_dim=512, w_hpf=1, dim_in=None, skip='none'):
        if skip not in ('unet', 'none'):
            raise ValueError(f'--skip {skip}: SkipVariantGenerator builds unet or none (hpf is Generator)')
        super().__init__(img_size, style_dim, max_conv_dim, w_hpf=w_hpf, dim_in=dim_in)
        self.skip = skip
        if 'hpf' in self._modules:
            del self.hpf
        if skip == 'unet':
            # channels entering each downsampling block = channels leaving the decoder block of the same size
            size, convs = img_size, {}
            with torch.random.fork_rng(devices=[]):  # the RNG stream of the shared networks stays hpf's
                for block in self.encode:
                    if block.downsample:
                        c = block.conv1.in_channels
                        convs[str(size)] = nn.Conv2d(c, c, 1, 1, 0, bias=False)
                        size //= 2
            self.skip_conv = nn.ModuleDict(convs)

    def get_extra_state(self):
        return {'skip': self.skip}

    def set_extra_state(self, state):
        saved = state.get('skip') if isinstance(state, dict) else None
        if saved != self.skip:
            raise RuntimeError(f'generator saved with --skip {saved}, built with --skip {self.skip}')

    def forward(self, x, s, masks=None):
        x = self.from_rgb(x)
        cache = {}
        for block in self.encode:
            if self.skip == 'unet' and block.downsample:
                cache[x.size(2)] = x
            x = block(x)
        for block in self.decode:
            x = block(x, s)
            if self.skip == 'unet' and block.upsample:
                x = (x + self.skip_conv[str(x.size(2))](cache[x.size(2)])) / math.sqrt(2)
        return self.to_rgb(x)


class UnitMasks(nn.Module):
    """--hpf_masks ones: the high-pass skips unmasked (masks of ones), for data without faces; stands where the FAN
    stands (get_heatmap), without its weights or cost."""

    @torch.no_grad()
    def get_heatmap(self, x):
        ones = torch.ones(x.size(0), 1, x.size(2), x.size(3), dtype=x.dtype, device=x.device)
        return ones, ones


def masks_of(nets, x):
    """The high-pass masks of x when the networks have a mask source (build_model adds one only for --skip hpf with
    w_hpf > 0), else None."""
    return nets.fan.get_heatmap(x) if 'fan' in nets else None


class MappingNetwork(nn.Module):
    def __init__(self, latent_dim=16, style_dim=64, num_domains=2, hidden_dim=512):
        super().__init__()
        layers = [nn.Linear(latent_dim, hidden_dim), nn.ReLU()]
        for _ in range(3):
            layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
        self.shared = nn.Sequential(*layers)

        self.unshared = nn.ModuleList()
        for _ in range(num_domains):
            self.unshared.append(nn.Sequential(
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                nn.Linear(hidden_dim, style_dim)))

    def forward(self, z, y):
        h = self.shared(z)
        out = torch.stack([head(h) for head in self.unshared], dim=1)  # (N, num_domains, style_dim)
        return out[torch.arange(y.size(0), device=y.device), y]         # (N, style_dim)


def _conv_trunk(img_size, max_conv_dim, dim_in=None):
    """conv3, log2(img_size) - 2 downsampling ResBlks, LReLU, 4x4 conv, LReLU: shared by E and D."""
    dim_in = dim_in or _default_dim_in(img_size)
    blocks = [nn.Conv2d(3, dim_in, 3, 1, 1)]
    dim_out = dim_in
    for _ in range(_num_halvings(img_size) - 2):
        dim_out = min(dim_in * 2, max_conv_dim)
        blocks.append(ResBlk(dim_in, dim_out, downsample=True))
        dim_in = dim_out
    blocks += [nn.LeakyReLU(0.2), nn.Conv2d(dim_out, dim_out, 4, 1, 0), nn.LeakyReLU(0.2)]
    return blocks, dim_out


class StyleEncoder(nn.Module):
    def __init__(self, img_size=256, style_dim=64, num_domains=2, max_conv_dim=512, dim_in=None):
        super().__init__()
        blocks, dim_out = _conv_trunk(img_size, max_conv_dim, dim_in)
        self.shared = nn.Sequential(*blocks)
        self.unshared = nn.ModuleList([nn.Linear(dim_out, style_dim) for _ in range(num_domains)])

    def forward(self, x, y):
        h = self.shared(x).flatten(1)                                   # (N, dim_out)
        out = torch.stack([head(h) for head in self.unshared], dim=1)  # (N, num_domains, style_dim)
        return out[torch.arange(y.size(0), device=y.device), y]         # (N, style_dim)


class Discriminator(nn.Module):
    def __init__(self, img_size=256, num_domains=2, max_conv_dim=512, dim_in=None):
        super().__init__()
        blocks, dim_out = _conv_trunk(img_size, max_conv_dim, dim_in)
        blocks.append(nn.Conv2d(dim_out, num_domains, 1, 1, 0))
        self.main = nn.Sequential(*blocks)

    def forward(self, x, y):
        out = self.main(x).flatten(1)                            # (N, num_domains)
        return out[torch.arange(y.size(0), device=y.device), y]  # (N,)


def he_init(module):
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight, mode='fan_in', nonlinearity='relu')
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)


def init_weights(net):
    """He initialisation (he_init on every module, in the reference's order). The U-net's extra 1x1 convs draw from
    a forked RNG, so that with the same seed every shared parameter, and the F, E, D initialised after G, start as in
    the hpf network: the variants differ only in their skips."""
    extra = set(net.skip_conv.modules()) if isinstance(net, SkipVariantGenerator) and net.skip == 'unet' else set()
    net.apply(lambda m: None if m in extra else he_init(m))
    if extra:
        with torch.random.fork_rng(devices=[]):
            net.skip_conv.apply(he_init)


def build_model(args):
    """(nets, nets_ema) as Munch. G, F, E, D get He initialisation, then the EMA copies are taken (the reference
    copies before initialising; see README, Differences). With w_hpf > 0 and --skip hpf both hold the same FAN (eval
    mode; a UnitMasks with --hpf_masks ones): the mask source; other --skip variants have none (masks_of gives None)."""
    from core.config import complete_args
    args = complete_args(args)  # a public entry point: args may come from the reference's own parser
    dim_in = args.base_dim or None
    if args.skip == 'hpf':
        generator = Generator(args.img_size, args.style_dim, args.max_conv_dim, w_hpf=args.w_hpf, dim_in=dim_in)
    else:
        generator = SkipVariantGenerator(args.img_size, args.style_dim, args.max_conv_dim, w_hpf=args.w_hpf,
                                         dim_in=dim_in, skip=args.skip)
    mapping_network = MappingNetwork(args.latent_dim, args.style_dim, args.num_domains, hidden_dim=args.hidden_dim)
    style_encoder = StyleEncoder(args.img_size, args.style_dim, args.num_domains, args.max_conv_dim, dim_in=dim_in)
    discriminator = Discriminator(args.img_size, args.num_domains, args.max_conv_dim, dim_in=dim_in)
    nets = Munch(generator=generator, mapping_network=mapping_network,
                 style_encoder=style_encoder, discriminator=discriminator)
    for net in nets.values():
        init_weights(net)
    nets_ema = Munch(generator=copy.deepcopy(generator),
                     mapping_network=copy.deepcopy(mapping_network),
                     style_encoder=copy.deepcopy(style_encoder))
    if args.w_hpf > 0 and args.skip == 'hpf':
        from core.wing import FAN
        if args.hpf_masks == 'ones':
            fan = UnitMasks()
        else:
            fan = FAN(fname_pretrained=args.wing_path, trust_pickle=args.trust_pickle).eval()
        fan.requires_grad_(False)
        nets.fan = fan
        nets_ema.fan = fan
    return nets, nets_ema
