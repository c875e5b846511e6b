"""--micro_batch (core/machinery/micro_batch.py, Solver._step): the batch in chunks, gradients accumulated, one optimiser step per
network, gives the whole batch's update; the default is the unchunked step bit for bit; auto's choice.

The exactness runs train in float64 (the networks and the batch .double(), as tests/machinery/test_distributed.py does): there
the chunked and whole-batch sums differ by ~1e-16 and every loss term, parameter and EMA copy agrees to 1e-12 relative,
except the parameters that get no gradient in exact arithmetic: the generator's conv biases that an instance norm
downstream cancels. Their computed gradients are rounding noise (1e-16 of the network's largest), which Adam's
lr * g / (|g| + eps) turns into moves of ~1e-13; they cannot change any output, and the test checks they are exactly
those biases and that they stay below 1e-10 apart. In float32 the same noise moves them by up to a few lr: the
float32 figures are in docs/memory.md.
"""
import os

import pytest
import torch
from munch import Munch

from conftest import tiny_args
from core.config import parse_args
from core.machinery.micro_batch import candidate_sizes, choose_micro_batch, resolve_micro_batch, split_batch, weighted_terms
from core.solver import Solver

SLOW = pytest.mark.skipif(not os.environ.get('STARGAN_SLOW_TESTS'), reason='set STARGAN_SLOW_TESTS=1 (the FAN at '
                          'batch 8 in float64: minutes)')


def _batch(args, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    B, S, K = args.batch_size, args.img_size, args.num_domains

    def r(*shape):
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).to(dtype)

    def n(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)
    return Munch(x_src=r(B, 3, S, S), y_src=torch.randint(0, K, (B,), generator=g), x_ref=r(B, 3, S, S),
                 x_ref2=r(B, 3, S, S), y_ref=torch.randint(0, K, (B,), generator=g), z_trg=n(B, args.latent_dim),
                 z_trg2=n(B, args.latent_dim))


def _train(micro_batch, dtype=torch.float64, iters=2, batch_size=8, **kw):
    """Two iterations from seed 0: (terms (iters, 14), parameters of nets and EMA copies by name, the largest
    gradient of each parameter relative to its network's largest, over the optimiser steps)."""
    torch.manual_seed(0)
    args = tiny_args(batch_size=batch_size, micro_batch=micro_batch, **kw)
    solver = Solver(args, 'cpu')
    if dtype == torch.float64:
        solver.double()  # in place: the optimisers keep their parameters
    grad_ratio = {}
    for name, optim in solver.optims.items():
        def step(*a, _name=name, _step=optim.step, **k):
            grads = {n: p.grad for n, p in solver.nets[_name].named_parameters() if p.grad is not None}
            top = max(g.abs().max() for g in grads.values())
            for n, g in grads.items():
                key = f'{_name}.{n}'
                grad_ratio[key] = max(grad_ratio.get(key, 0.0), float(g.abs().max() / top))
            return _step(*a, **k)
        optim.step = step
    terms = [solver.train_step(_batch(args, i, dtype), i) for i in range(iters)]
    terms = torch.stack(terms) if terms else None
    params = {f'{k}.{n}': p.detach().clone() for k, net in solver.nets.items() if k != 'fan'
              for n, p in net.named_parameters()}
    params.update({f'ema.{k}.{n}': p.detach().clone() for k, net in solver.nets_ema.items() if k != 'fan'
                   for n, p in net.named_parameters()})
    return terms, params, grad_ratio


def _rel(a, b):
    """The norm-wise relative difference of two tensors, |a - b| / |b| (2-norms)."""
    return float((a - b).norm() / b.norm())


def _noise_params(grad_ratio):
    """Parameters whose gradient is rounding noise: below 1e-12 of their network's largest in float64."""
    return {k for k, r in grad_ratio.items() if r < 1e-12}


def _assert_whole_batch_update(micro_batches, batch_size=8, **kw):
    terms0, params0, ratio = _train(0, batch_size=batch_size, **kw)
    noise = _noise_params(ratio)
    # the noise ones are biases of G's convolutions followed (directly or through the residual sums) by an instance
    # norm; every other gradient is at least 1e-6 of its network's largest (measured: 2.5e-3)
    assert all(k.startswith('generator.') and k.endswith('.bias') and 'to_rgb' not in k for k in noise), noise
    assert min(r for k, r in ratio.items() if k not in noise) > 1e-6
    figures = {}
    for mb in micro_batches:
        terms, params, _ = _train(mb, batch_size=batch_size, **kw)
        assert terms.dtype == torch.float64
        t_rel = float(((terms - terms0).abs() / terms0.abs()).max())
        live = [k for k in params0 if k.removeprefix('ema.') not in noise]
        p_rel = max(_rel(params[k], params0[k]) for k in live)
        noise_abs = max([float((params[k] - params0[k]).abs().max()) for k in params0 if k not in live], default=0.)
        figures[mb] = (t_rel, p_rel, noise_abs)
        assert t_rel < 1e-12, (mb, t_rel)
        assert p_rel < 1e-12, (mb, p_rel, max(live, key=lambda k: _rel(params[k], params0[k])))
        assert noise_abs < 1e-10, (mb, noise_abs)
    # ... while the two iterations moved the parameters by far more (the comparison can fail)
    _, params_init, _ = _train(0, iters=0, batch_size=batch_size, **kw)
    assert max(_rel(params0[k], params_init[k]) for k in params0 if 'ema.' not in k) > 1e-3
    print('micro_batch: (loss terms, parameters and EMA, noise biases abs)', figures, f'{len(noise)} noise biases')
    return figures


# ------------------------------------------------------------------------------------------------------ exactness
def test_float64_chunks_of_2_and_1_give_the_whole_batch_update():
    _assert_whole_batch_update((2, 1))


def test_float64_with_the_fan_masks(random_wing):
    """w_hpf 1: the FAN's masks of the whole batch sliced per chunk, those of x_fake per chunk (the FAN is per image:
    its batch norms use their stored statistics). Batch 2 in chunks of 1 here; batch 8 in the slow test."""
    _assert_whole_batch_update((1,), batch_size=2, w_hpf=1, img_size=64, wing_path=random_wing)


@SLOW
def test_float64_with_the_fan_masks_batch_8(random_wing):
    _assert_whole_batch_update((2, 1), w_hpf=1, img_size=64, wing_path=random_wing)


def _float32_against_float64(micro_batches, **kw):
    """Each float32 run's distance to the float64 whole-batch run: chunked or not, rounding of the same size."""
    terms64, params64, _ = _train(0, **kw)
    out = {}
    for mb in (0,) + tuple(micro_batches):
        terms, params, _ = _train(mb, dtype=torch.float32, **kw)
        t_rel = (terms.double() - terms64).abs() / terms64.abs()
        out[mb] = (float(t_rel[0, :10].max()), float(t_rel.max()),
                   max(float((params[k].double() - params64[k]).abs().max()) for k in params64))
    return out


def test_float32_chunks_are_within_rounding():
    """float32: the first 10 terms (computed before G's first update) agree with the float64 run to float32
    rounding, chunked or not; later terms and the parameters follow Adam's lr * sign(g) on rounding-level gradients
    (moves of up to a few lr), for the whole batch as much as for chunks."""
    lr = tiny_args().lr
    figures = _float32_against_float64((2, 1))
    print('float32 vs float64 (iteration-1 terms before G moves, all terms, parameters abs):', figures)
    for mb, (first, every, param_abs) in figures.items():
        assert first < 1e-6, (mb, first)
        assert every < 1e-3, (mb, every)
        assert param_abs < 10 * lr, (mb, param_abs)


def test_the_default_is_the_unchunked_step_bit_for_bit():
    """--micro_batch 0, a micro-batch as large as the batch or larger: the one-chunk path, the same float32 numbers."""
    runs = [_train(mb, dtype=torch.float32, batch_size=4) for mb in (0, 4, 16)]
    for terms, params, _ in runs[1:]:
        assert torch.equal(terms, runs[0][0])
        assert all(torch.equal(params[k], runs[0][1][k]) for k in params)


def test_amp_bf16_runs_in_chunks():
    """--amp bf16 with chunks: the whole batch's terms to bf16 rounding (CPU autocast)."""
    t0, _, _ = _train(0, dtype=torch.float32, batch_size=4, iters=1, amp='bf16')
    t2, _, _ = _train(2, dtype=torch.float32, batch_size=4, iters=1, amp='bf16')
    assert t2.dtype == torch.float32 and torch.isfinite(t2).all()
    assert torch.allclose(t2, t0, rtol=3e-2, atol=1e-3), (t2 - t0).abs().max()


# ------------------------------------------------------------------------------------------------------ the pieces
def test_split_batch_keeps_the_order_the_pairs_and_the_masks():
    args = tiny_args(batch_size=5)
    inputs = _batch(args, 0, torch.float32)
    masks = (torch.rand(5, 1, 4, 4), torch.rand(5, 1, 4, 4))
    chunks = split_batch(inputs, masks, 2)
    assert [share for share, _ in chunks] == [0.4, 0.4, 0.2]
    for k in inputs:
        assert torch.equal(torch.cat([c[k] for _, c in chunks]), inputs[k])
    for i in range(2):
        assert torch.equal(torch.cat([c.masks[i] for _, c in chunks]), masks[i])
    assert split_batch(inputs, None, 2)[0][1].masks is None
    (share, whole), = split_batch(inputs, masks, 0)
    assert share == 1.0 and whole.x_src is inputs.x_src and whole.masks is masks
    assert len(split_batch(inputs, masks, 5)) == len(split_batch(inputs, masks, 9)) == 1


def test_weighted_terms():
    parts = [(0.75, Munch(a=torch.tensor(2.0))), (0.25, Munch(a=torch.tensor(6.0)))]
    assert float(weighted_terms(parts).a) == 3.0
    one = Munch(a=torch.tensor(2.0))
    assert weighted_terms([(1.0, one)]) is one


def test_the_flag():
    assert parse_args(['--mode', 'train']).micro_batch == 0
    assert parse_args(['--mode', 'train', '--micro_batch', '2']).micro_batch == 2
    assert parse_args(['--mode', 'train', '--micro_batch', 'auto']).micro_batch == 'auto'
    for bad in ('-1', 'two'):
        with pytest.raises(SystemExit):
            parse_args(['--mode', 'train', '--micro_batch', bad])


def test_a_micro_batch_is_printed_and_capped_at_the_batch(capsys):
    args = tiny_args(batch_size=8)
    assert resolve_micro_batch(Munch(args, micro_batch=3), torch.device('cpu'), 8) == 3
    assert 'in 3 chunks of at most 3 images' in capsys.readouterr().out
    assert resolve_micro_batch(Munch(args, micro_batch=32), torch.device('cpu'), 8) == 8
    assert resolve_micro_batch(Munch(args, micro_batch=0), torch.device('cpu'), 8) == 8
    assert capsys.readouterr().out == ''


def test_auto_on_a_cpu_is_the_whole_batch(capsys):
    solver = Solver(tiny_args(batch_size=4, micro_batch='auto'), 'cpu')
    assert solver.micro_batch == 4
    assert '--micro_batch auto: the whole batch (4 images) on cpu' in capsys.readouterr().out


def test_candidate_sizes():
    assert candidate_sizes(8) == [8, 4, 3, 2, 1]
    assert candidate_sizes(1) == [1]


def test_auto_picks_the_largest_size_that_fits_a_given_free_memory(capsys, monkeypatch):
    """The CUDA path with a given free-memory number (the counts run on the CPU: the same fp32 tensors)."""
    import core.machinery.memory
    from core.machinery.memory import MARGIN, count_training_memory
    args = tiny_args(batch_size=8, micro_batch='auto')
    counts = {n: count_training_memory(args, n, 8, solver_cls=Solver) for n in (8, 4, 3, 2, 1)}
    need = {n: c.total for n, c in counts.items()}
    assert need[1] < need[2] < need[3] < need[4] < need[8]
    monkeypatch.setattr(core.machinery.memory, 'count_training_memory', lambda a, n, b, d, solver_cls: counts[n])  # counted once each
    cuda = torch.device('cuda')
    assert resolve_micro_batch(args, cuda, 8, free_bytes=need[8] * MARGIN) == 8
    assert resolve_micro_batch(args, cuda, 8, free_bytes=need[4] * MARGIN + 1) == 4
    assert resolve_micro_batch(args, cuda, 8, free_bytes=need[4] * MARGIN - 1) == 3
    out = capsys.readouterr().out
    assert '--micro_batch auto: 3 images per chunk (3 chunk(s) of the batch of 8)' in out and 'GiB free' in out
    with pytest.raises(SystemExit, match='one image per chunk needs'):
        resolve_micro_batch(args, cuda, 8, free_bytes=need[1] * MARGIN - 1)
    # the selection itself, with any cost function
    assert choose_micro_batch(8, 100, lambda n: 30 * n, 1.0) == (3, 90)
    assert choose_micro_batch(8, 10, lambda n: 30 * n, 1.0) is None


def test_chunks_with_cuda_graphs_stop_with_a_message():
    for mode in ('reduce-overhead', 'max-autotune'):
        args = tiny_args(batch_size=4, micro_batch=2, compile=True, compile_mode=mode)
        with pytest.raises(SystemExit, match=f'--micro_batch 2 with --compile_mode {mode}'):
            Solver(args, 'cpu')


def test_compiled_chunks_match_eager_chunks():
    """--compile (aot_eager: capture without code generation) with chunks of 1 of a batch of 2: the eager chunked
    terms, no recompilation in iteration 2."""
    from torch._dynamo.utils import counters
    out = []
    for compile_ in (False, True):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        args = tiny_args(batch_size=2, micro_batch=1, compile=compile_, compile_backend='aot_eager')
        solver = Solver(args, 'cpu')
        terms, stats = [], []
        for i in range(2):
            terms.append(solver.train_step(_batch(args, i, torch.float32), i))
            stats.append(dict(counters['stats']))
        out.append((torch.stack(terms), stats))
    (t_eager, _), (t_comp, stats) = out
    assert stats[1] == stats[0] and stats[0].get('unique_graphs', 0) >= 5
    assert torch.allclose(t_comp[0, :10], t_eager[0, :10], rtol=1e-5, atol=0)
    assert torch.allclose(t_comp, t_eager, rtol=1e-3, atol=0)
