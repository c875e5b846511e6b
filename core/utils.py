"""Image grids (SPEC section 5): debug images during training and the reference grid of --mode sample.

    debug_image(nets_ema, args, inputs_val, step)  # {step:06d}_cycle_consistency / _latent_psi_X / _reference.jpg
    translate_using_reference(nets, args, x_src, x_ref, y_ref, 'reference.jpg')
"""
import json
import os

import torch
import torchvision.utils as vutils

from core.model import masks_of


def denormalize(x):
    return ((x + 1) / 2).clamp_(0, 1)


def save_image(x, ncol, filename):
    """A grid of ncol columns, no padding, from images in [-1, 1]."""
    os.makedirs(os.path.dirname(filename) or '.', exist_ok=True)
    vutils.save_image(denormalize(x.detach().float().cpu()), filename, nrow=ncol, padding=0)


def save_json(json_file, filename):
    with open(filename, 'w') as f:
        json.dump(json_file, f, indent=4, sort_keys=False)


@torch.no_grad()
def translate_and_reconstruct(nets, args, x_src, y_src, x_ref, y_ref, filename):
    """Rows: sources, references, translations with the reference styles, reconstructions."""
    N = x_src.size(0)
    s_ref = nets.style_encoder(x_ref, y_ref)
    x_fake = nets.generator(x_src, s_ref, masks=masks_of(nets, x_src))
    s_src = nets.style_encoder(x_src, y_src)
    x_rec = nets.generator(x_fake, s_src, masks=masks_of(nets, x_fake))
    save_image(torch.cat([x_src, x_ref, x_fake, x_rec], dim=0), N, filename)


@torch.no_grad()
def average_style(nets, y, latent_dim, n=10000, generator=None):
    """Mean of F(z, y) over n random z: the centre of the truncation trick."""
    device = next(nets.mapping_network.parameters()).device
    z_many = torch.randn(n, latent_dim, generator=generator).to(device)
    y_many = torch.full((n,), int(y), dtype=torch.long, device=device)
    return nets.mapping_network(z_many, y_many).mean(dim=0, keepdim=True)


@torch.no_grad()
def translate_using_latent(nets, args, x_src, y_trg_list, z_trg_list, psi, filename, generator=None):
    """Source row, then for each target domain one row per z: s = lerp(s_avg, F(z, y), psi)."""
    N = x_src.size(0)
    latent_dim = z_trg_list[0].size(1)
    x_concat = [x_src]
    masks = masks_of(nets, x_src)
    for y_trg in y_trg_list:
        s_avg = average_style(nets, y_trg[0], latent_dim, generator=generator).repeat(N, 1)
        for z_trg in z_trg_list:
            s_trg = torch.lerp(s_avg, nets.mapping_network(z_trg, y_trg), psi)
            x_concat.append(nets.generator(x_src, s_trg, masks=masks))
    save_image(torch.cat(x_concat, dim=0), N, filename)


@torch.no_grad()
def translate_using_reference(nets, args, x_src, x_ref, y_ref, filename):
    """A white tile, the sources along the top, the references down the first column, each translation in the grid."""
    N, C, H, W = x_src.size()
    wb = torch.ones(1, C, H, W, device=x_src.device, dtype=x_src.dtype)
    masks = masks_of(nets, x_src)
    s_ref = nets.style_encoder(x_ref, y_ref)
    x_concat = [torch.cat([wb, x_src], dim=0)]
    for i in range(x_ref.size(0)):
        x_fake = nets.generator(x_src, s_ref[i:i + 1].expand(N, -1), masks=masks)
        x_concat.append(torch.cat([x_ref[i:i + 1], x_fake], dim=0))
    save_image(torch.cat(x_concat, dim=0), N + 1, filename)


PSIS = (0.5, 0.7, 1.0)  # the truncations of the latent grids


def latent_grid_inputs(args, N, device):
    """The target domains (the first <= 5) and latent codes of the latent grids: num_outs_per_domain codes, each
    shared by the N sources, drawn on the CPU from --seed, so that every step and every device shows the same codes."""
    g = torch.Generator().manual_seed(args.seed)
    y_trg_list = [torch.full((N,), y, dtype=torch.long, device=device) for y in range(min(args.num_domains, 5))]
    z_trg_list = torch.randn(args.num_outs_per_domain, 1, args.latent_dim, generator=g).repeat(1, N, 1).to(device)
    return y_trg_list, z_trg_list


def average_style_generator(args):
    """The generator of the 10,000 codes behind the truncation centre (a stream of its own, from --seed)."""
    return torch.Generator().manual_seed(args.seed + 1)


@torch.no_grad()
def debug_image(nets, args, inputs, step):
    x_src, y_src, x_ref, y_ref = inputs.x_src, inputs.y_src, inputs.x_ref, inputs.y_ref
    filename = os.path.join(args.sample_dir, '%06d_cycle_consistency.jpg' % step)
    translate_and_reconstruct(nets, args, x_src, y_src, x_ref, y_ref, filename)

    y_trg_list, z_trg_list = latent_grid_inputs(args, x_src.size(0), x_src.device)
    for psi in PSIS:
        filename = os.path.join(args.sample_dir, '%06d_latent_psi_%.1f.jpg' % (step, psi))
        translate_using_latent(nets, args, x_src, y_trg_list, z_trg_list, psi, filename,
                               generator=average_style_generator(args))

    filename = os.path.join(args.sample_dir, '%06d_reference.jpg' % step)
    translate_using_reference(nets, args, x_src, x_ref, y_ref, filename)
