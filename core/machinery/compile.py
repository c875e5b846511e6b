"""--compile: torch.compile of the training networks, in place.

    logits_and_r1 = compile_nets(nets, args)   # G, F, E, D (and the FAN's masks) compiled; returns D(x_real) with R1

The compiled autograd has no double backward, so the reference's R1 (autograd.grad with create_graph=True) cannot run
through compiled code: D's real branch and its R1 penalty become one function (core.losses.d_logits_and_r1, the same
value through torch.func.vjp), compiled as a whole.
"""
import contextlib

import torch

from core.losses import d_logits_and_r1

TRAINABLE = ('generator', 'mapping_network', 'style_encoder', 'discriminator')


def cudagraphs_enabled(args):
    return bool(args.compile) and args.compile_mode == 'reduce-overhead'


def compile_nets(nets, args):
    """Compiles every trainable network in place (state_dict keys unchanged) with --compile_mode/--compile_backend,
    and the FAN's get_heatmap (the network and ~20 passes of mask post-processing as one graph). Returns
    logits_and_r1(x_real, y_org) -> (D(x_real, y_org), R1) for compute_d_loss."""
    kw = dict(mode=None if args.compile_mode == 'default' else args.compile_mode, backend=args.compile_backend)
    for name in TRAINABLE:
        nets[name].compile(**kw)
    if 'fan' in nets:
        nets.fan.get_heatmap = torch.compile(nets.fan.get_heatmap, **kw)
    discriminator = nets.discriminator
    compiled = torch.compile(lambda x_real, y_org: d_logits_and_r1(discriminator, x_real, y_org), **kw)
    cudagraphs = cudagraphs_enabled(args)

    def logits_and_r1(x_real, y_org):
        out, loss_reg = compiled(x_real, y_org)
        # under CUDA graphs the outputs live in the graph's memory, which the D step on reference images
        # overwrites while the latent step's R1 value is still to be logged: copies (a few bytes)
        return (out.clone(), loss_reg.clone()) if cudagraphs else (out, loss_reg)
    return logits_and_r1


@contextlib.contextmanager
def explain_compile_errors(args, step):
    """A torch.compile failure inside the block becomes an error that names the flag and what to try."""
    try:
        yield
    except Exception as e:
        if args.compile and type(e).__module__.startswith(('torch._dynamo', 'torch._inductor')):
            raise RuntimeError(f'--compile: torch.compile failed at step {step} ({type(e).__name__}). Train without '
                               f'--compile (the same computation, eager), or try --compile_backend aot_eager to tell '
                               f'capture problems from code generation ones.') from e
        raise
