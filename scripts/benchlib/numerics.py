"""How far a mode's first iteration lands from eager fp32's: the same weights and batch, parameters, gradients and loss
terms compared (definitions in DEFINITIONS, which the JSON report carries)."""
import math

import torch

from benchlib.timing import free_memory, sync
from benchlib.workload import TRAINABLE, new_solver


DEFINITIONS = {
    's_per_iter': 'mean seconds per iteration = wall time of the timed region / iterations (throughput)',
    's_per_iter_median': 'median of the per-iteration times (CUDA events between iterations; perf_counter on CPU)',
    'tflops': 'flops_per_iter / s_per_iter / 1e12 (the reference_work mode does more FLOPs: its own count, or none '
              'with --flops_per_iter)',
    'peak_mem_gib': 'torch.cuda.max_memory_allocated over the timed iterations (reset after warm-up)',
    'param_max_rel_diff': 'after one iteration from the same weights and batch: max|p_mode - p_eager| / max|p_eager|, '
                          'maxima over all parameter elements (of a network, or of G, F, E, D together)',
    'param_max_abs_diff': 'max|p_mode - p_eager| over all parameter elements (one Adam step moves an element by about '
                          'lr = 1e-4, so a flipped gradient sign shows as ~2e-4 per step)',
    'weight_max_rel_diff': 'max over conv/linear weight tensors of max|p_mode - p_eager| / max|p_eager| (per tensor; '
                           'zero-initialised biases are left out: after one step they are themselves O(lr))',
    'param_rel_l2': '||p_mode - p_eager||_2 / ||p_eager||_2 over all parameters',
    'update_rel_l2': '||p_mode - p_eager||_2 / ||p_eager - p_init||_2 over all parameters: difference of the '
                     'one-iteration updates, relative to the update',
    'grad_rel_l2': '||g_mode - g_eager||_2 / ||g_eager||_2 of the gradients left by the last backward (G reference '
                   'step: G; E and D too in the reference_work mode, where they are not frozen)',
    'loss_max_rel_diff': 'max over the 14 loss terms of |t_mode - t_eager| / max(|t_eager|, 1e-6)',
    'loss_first_step_max_rel_diff': 'the same over D/latent_{real,fake,reg}, computed before any optimiser step: '
                                    'forward (and R1 backward) numerics alone, from identical weights',
    'numerics_note': 'Adam\'s first step moves each element by about lr * sign(grad) (beta1 = 0), so elements whose '
                     'gradient is near zero can flip and update_rel_l2 is large even for rounding-level differences; '
                     'compare each mode with the eager_repeat (nondeterminism) and eager_no_tf32 (TF32 rounding, '
                     'CUDA) rows',
}


def snapshot(solver):
    """CPU fp32 copies of the parameters (and the gradients left by the last backward) of G, F, E, D."""
    params, grads = {}, {}
    for n in TRAINABLE:
        for k, p in getattr(solver, n).named_parameters():
            params[f'{n}.{k}'] = p.detach().float().cpu().clone()
            if p.grad is not None:
                grads[f'{n}.{k}'] = p.grad.detach().float().cpu().clone()
    return params, grads


def compare_numerics(base, other):
    """base/other: dict(p0, p1, grads, terms). Returns the metrics of DEFINITIONS, overall and per network."""
    out = dict(initial_weights_identical=all(torch.equal(base['p0'][k], other['p0'][k]) for k in base['p0']))
    per_net = {}
    for n in TRAINABLE + ('all',):
        keys = [k for k in base['p1'] if n == 'all' or k.startswith(n + '.')]
        m = dict(max_abs=0.0, max_p=0.0, w_rel=0.0, dd=0.0, pp=0.0, du=0.0, gd=0.0, gn=0.0)
        for k in keys:
            b, o, i = base['p1'][k], other['p1'][k], base['p0'][k]
            d = o - b
            dmax, bmax = float(d.abs().max()), float(b.abs().max())
            m['max_abs'] = max(m['max_abs'], dmax)
            m['max_p'] = max(m['max_p'], bmax)
            if b.dim() >= 2:  # conv / linear weights (biases and norm affines start at 0 or 1: see DEFINITIONS)
                m['w_rel'] = max(m['w_rel'], dmax / max(bmax, 1e-30))
            m['dd'] += float(d.pow(2).sum())
            m['pp'] += float(b.pow(2).sum())
            m['du'] += float((b - i).pow(2).sum())
            if k in base['grads'] and k in other['grads']:
                m['gd'] += float((other['grads'][k] - base['grads'][k]).pow(2).sum())
                m['gn'] += float(base['grads'][k].pow(2).sum())
        rel = lambda a, b: math.sqrt(a) / math.sqrt(b) if b > 0 else None  # noqa: E731
        per_net[n] = dict(param_max_rel_diff=m['max_abs'] / m['max_p'] if m['max_p'] > 0 else None,
                          param_max_abs_diff=m['max_abs'], weight_max_rel_diff=m['w_rel'],
                          param_rel_l2=rel(m['dd'], m['pp']), update_rel_l2=rel(m['dd'], m['du']),
                          grad_rel_l2=rel(m['gd'], m['gn']))
    out.update(per_net.pop('all'))
    tb, to = base['terms'], other['terms']
    out['loss_max_abs_diff'] = float((to - tb).abs().max())
    rel = (to - tb).abs() / tb.abs().clamp_min(1e-6)
    out['loss_max_rel_diff'] = float(rel.max())
    out['loss_first_step_max_rel_diff'] = float(rel[:3].max())  # D/latent_*: before any optimiser step
    out['loss_terms_finite'] = bool(torch.isfinite(to).all())
    out['per_network'] = per_net
    return out



def first_iteration(solver, inputs):
    """One iteration on inputs from the solver's current weights: the state compare_numerics takes."""
    p0, _ = snapshot(solver)
    terms = solver.train_step(inputs, 0)
    sync(solver.device)
    p1, grads = snapshot(solver)
    return dict(p0=p0, p1=p1, grads=grads, terms=terms.detach().float().cpu())


def numerics_only(args, device, fixed_inputs, cudnn_tf32=None):
    """One iteration on the fixed batch from the initial weights; returns the numerics state."""
    old = torch.backends.cudnn.allow_tf32
    if cudnn_tf32 is not None:
        torch.backends.cudnn.allow_tf32 = cudnn_tf32
    solver = new_solver(args, device)
    try:
        return first_iteration(solver, fixed_inputs)
    finally:
        torch.backends.cudnn.allow_tf32 = old
        del solver
        free_memory(device)
