"""The StarGAN v2 objectives (SPEC section 3) as pure functions: tensors in, (loss, Munch of detached 0-d tensors) out.

`args` is anything with w_hpf and the lambda_* weights (the Solver passes the current lambda_ds).
Nothing here reads a value back to the host: call .item() only when logging.
"""
import torch
import torch.nn.functional as F
from munch import Munch

from core.model import masks_of


def adv_loss(logits, target):
    assert target in [1, 0]
    targets = torch.full_like(logits, fill_value=target)
    return F.binary_cross_entropy_with_logits(logits, targets)


def r1_reg(d_out, x_in):
    """Zero-centred gradient penalty on real images: 0.5 * E_batch[ sum_pixels (d sum(D) / d x)^2 ]."""
    batch_size = x_in.size(0)
    grad_dout = torch.autograd.grad(outputs=d_out.sum(), inputs=x_in,
                                    create_graph=True, retain_graph=True, only_inputs=True)[0]
    grad_dout2 = grad_dout.pow(2)
    assert grad_dout2.size() == x_in.size()
    return 0.5 * grad_dout2.reshape(batch_size, -1).sum(1).mean(0)  # reshape: a channels_last gradient is no view


def d_logits_and_r1(discriminator, x_real, y_org):
    """D(x_real, y_org) and its R1 penalty (the value of r1_reg) as one differentiable function, with the input
    gradient taken by torch.func.vjp instead of autograd.grad(create_graph=True). torch.compile can capture this form
    and differentiate it (its compiled autograd has no double backward); eager, it computes the same numbers."""
    out, vjp_fn = torch.func.vjp(lambda x: discriminator(x, y_org), x_real)
    (grad_dout,) = vjp_fn(torch.ones_like(out))  # d sum(out) / d x_real
    return out, 0.5 * grad_dout.pow(2).flatten(1).sum(1).mean(0)


def target_style(nets, y_trg, z_trg=None, x_ref=None):
    """The target style code: from a latent code through the mapping network, or from a reference image through the
    style encoder (exactly one of z_trg, x_ref)."""
    if z_trg is not None:
        return nets.mapping_network(z_trg, y_trg)
    return nets.style_encoder(x_ref, y_trg)


def compute_d_loss(nets, args, x_real, y_org, y_trg, z_trg=None, x_ref=None, masks=None, logits_and_r1=None):
    """D loss with the target style from a latent code (z_trg) or a reference image (x_ref). logits_and_r1:
    optional (x_real, y_org) -> (D(x_real), R1), e.g. a compiled d_logits_and_r1 (Solver with --compile)."""
    assert (z_trg is None) != (x_ref is None)
    if logits_and_r1 is None:
        # a fresh leaf, so that x_real itself stays free of autograd (the reference flags it, which makes every later
        # G loss of the iteration also compute gradients with respect to the input images)
        x_in = x_real.detach().requires_grad_()
        out = nets.discriminator(x_in, y_org)
        loss_reg = r1_reg(out, x_in)
    else:
        out, loss_reg = logits_and_r1(x_real.detach(), y_org)
    loss_real = adv_loss(out, 1)

    with torch.no_grad():
        x_fake = nets.generator(x_real, target_style(nets, y_trg, z_trg, x_ref), masks=masks)
    out = nets.discriminator(x_fake, y_trg)
    loss_fake = adv_loss(out, 0)

    loss = loss_real + loss_fake + args.lambda_reg * loss_reg
    return loss, Munch(real=loss_real.detach(), fake=loss_fake.detach(), reg=loss_reg.detach())


def compute_g_loss(nets, args, x_real, y_org, y_trg, z_trgs=None, x_refs=None, masks=None):
    """G loss = adv + lambda_sty * sty - lambda_ds * ds + lambda_cyc * cyc, styles from latents or references."""
    assert (z_trgs is None) != (x_refs is None)
    z_trg, z_trg2 = z_trgs if z_trgs is not None else (None, None)
    x_ref, x_ref2 = x_refs if x_refs is not None else (None, None)
    s_trg = target_style(nets, y_trg, z_trg, x_ref)

    # adversarial loss
    x_fake = nets.generator(x_real, s_trg, masks=masks)
    out = nets.discriminator(x_fake, y_trg)
    loss_adv = adv_loss(out, 1)

    # style reconstruction loss
    s_pred = nets.style_encoder(x_fake, y_trg)
    loss_sty = torch.mean(torch.abs(s_pred - s_trg))

    # diversity sensitive loss; the second image is a constant (the reference detaches it), so it is computed without
    # building a graph: the same values, no activations kept for a backward that never comes
    with torch.no_grad():
        x_fake2 = nets.generator(x_real, target_style(nets, y_trg, z_trg2, x_ref2), masks=masks)
    loss_ds = torch.mean(torch.abs(x_fake - x_fake2))

    # cycle-consistency loss
    masks = masks_of(nets, x_fake)
    s_org = nets.style_encoder(x_real, y_org)
    x_rec = nets.generator(x_fake, s_org, masks=masks)
    loss_cyc = torch.mean(torch.abs(x_rec - x_real))

    loss = loss_adv + args.lambda_sty * loss_sty - args.lambda_ds * loss_ds + args.lambda_cyc * loss_cyc
    return loss, Munch(adv=loss_adv.detach(), sty=loss_sty.detach(), ds=loss_ds.detach(), cyc=loss_cyc.detach())


@torch.no_grad()
def moving_average(model, model_test, beta=0.999):
    """model_test <- lerp(model, model_test, beta) for every parameter (buffers are not averaged, as in the reference)."""
    params = [p.detach() for p in model.parameters()]
    params_ema = [p.detach() for p in model_test.parameters()]
    # the same lerp(param, param_ema, beta) as the reference, one fused launch per network
    torch._foreach_copy_(params_ema, torch._foreach_lerp(params, params_ema, beta))


def lambda_ds_at(step, lambda_ds, ds_iter):
    """The diversity weight used at (0-based) iteration `step`: linear decay from lambda_ds to 0 over ds_iter
    iterations. The reference decrements args.lambda_ds in place (and forgets it on resume); this is its closed form."""
    if ds_iter <= 0:
        return 0.0
    return max(0.0, lambda_ds * (1.0 - step / ds_iter))
