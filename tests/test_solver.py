import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from munch import Munch
from PIL import Image

from conftest import REPO, tiny_args
from core.checkpoint import find_latest_step
from core.solver import NonFiniteLossError, Solver, lr_factor


def batch(args, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, S = args.batch_size, args.img_size
    return Munch(x_src=torch.rand(B, 3, S, S, generator=g) * 2 - 1, y_src=torch.tensor([0, 1]),
                 x_ref=torch.rand(B, 3, S, S, generator=g) * 2 - 1, x_ref2=torch.rand(B, 3, S, S, generator=g) * 2 - 1,
                 y_ref=torch.tensor([1, 0]), z_trg=torch.randn(B, args.latent_dim, generator=g),
                 z_trg2=torch.randn(B, args.latent_dim, generator=g))


def snapshot(solver):
    return {k: [p.detach().clone() for p in net.parameters()] for k, net in solver.nets.items()}


def changed(before, solver):
    return {k for k, net in solver.nets.items()
            if any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters()))}


def test_which_networks_each_step_changes(monkeypatch):
    torch.manual_seed(0)
    args = tiny_args()
    solver = Solver(args, 'cpu')
    stepped = []
    for name, opt in solver.optims.items():
        orig = opt.step
        monkeypatch.setattr(opt, 'step', lambda *a, _n=name, _o=orig, **k: (stepped.append(_n), _o(*a, **k))[1])
    before = snapshot(solver)
    ema_before = {k: [p.detach().clone() for p in solver.nets_ema[k].parameters()] for k in solver.nets_ema}
    solver.train_step(batch(args), 0)
    # D latent, D ref, G latent (G, F, E), G ref (G only), in this order
    assert stepped == ['discriminator', 'discriminator', 'generator', 'mapping_network', 'style_encoder', 'generator']
    assert changed(before, solver) == {'generator', 'mapping_network', 'style_encoder', 'discriminator'}
    # EMA: p_ema = 0.999 p_ema + 0.001 p
    for k, net in solver.nets_ema.items():
        for old, p_ema, p in zip(ema_before[k], net.parameters(), solver.nets[k].parameters()):
            assert torch.allclose(p_ema, torch.lerp(p.detach(), old, 0.999))


def test_d_steps_leave_g_f_e_untouched():
    torch.manual_seed(0)
    args = tiny_args()
    solver = Solver(args, 'cpu')
    for name in ('generator', 'mapping_network', 'style_encoder'):
        solver.optims[name].step = lambda *a, **k: None  # only the D steps act
    before = snapshot(solver)
    solver.train_step(batch(args), 0)
    assert changed(before, solver) == {'discriminator'}


def test_reference_g_step_leaves_f_and_e_untouched():
    torch.manual_seed(0)
    args = tiny_args()
    solver = Solver(args, 'cpu')
    solver.optims.discriminator.step = lambda *a, **k: None
    calls = []
    for name in ('mapping_network', 'style_encoder'):
        opt = solver.optims[name]
        opt.step = lambda *a, _n=name, **k: calls.append(_n)  # record, don't step
    solver.train_step(batch(args), 0)
    assert calls == ['mapping_network', 'style_encoder']  # once each: in the latent G step only


def test_frozen_networks_in_the_g_steps_change_nothing_but_the_work():
    """The G steps freeze D (and E in the reference step): bit-identical to computing the weight gradients the
    reference computes and throws away, and those gradients are indeed not computed."""
    results = []
    for skip in (False, True):
        torch.manual_seed(0)
        args = tiny_args()
        solver = Solver(args, 'cpu', skip_unused_grads=skip)
        terms = torch.stack([solver.train_step(batch(args, seed=i), i) for i in range(2)])
        results.append((terms, snapshot(solver), solver))
    (t0, p0, s0), (t1, p1, s1) = results
    assert torch.equal(t0, t1)
    assert all(torch.equal(a, b) for k in p0 for a, b in zip(p0[k], p1[k]))
    # after the G reference step: the reference leaves gradients on D and E, the frozen path none
    assert all(p.grad is not None for p in s0.nets.discriminator.parameters())
    assert all(p.grad is None for p in s1.nets.discriminator.parameters())
    assert all(p.grad is None for p in s1.nets.style_encoder.parameters())
    assert all(p.grad is not None for p in s1.nets.generator.parameters())
    assert all(p.requires_grad for k, net in s1.nets.items() if k != 'fan' for p in net.parameters())


def _compiled_vs_eager(backend, n_iters, **kw):
    """One network set eager, one compiled, from the same weights on the same batches: their loss terms, and
    the dynamo counters of the compiled run."""
    from torch._dynamo.utils import counters
    out = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        args = tiny_args(compile=compile_, compile_backend=backend, **kw)
        if compile_:
            torch._dynamo.reset()
            counters.clear()
        solver = Solver(args, 'cpu')  # with args.compile: compile_nets, in place
        terms, stats = [], []
        for i in range(n_iters):
            terms.append(solver.train_step(batch(args, seed=i), i))
            stats.append(dict(counters['stats']))
        out.append((torch.stack(terms), stats, dict(counters['graph_break']), solver))
    return out


def _assert_terms_close(t_comp, t_eager):
    # Iteration 1 up to the G latent step runs from the same weights: rounding only (inductor on a CPU: <= 7.2e-7 with
    # w_hpf 1). The G reference terms and iteration 2 run after Adam steps, whose first move is ~lr * sign(grad) for
    # gradients that can sit at rounding level (see test_losses.py): 3.4e-5 with w_hpf 1.
    assert torch.allclose(t_comp[0, :10], t_eager[0, :10], rtol=1e-5, atol=0)
    assert torch.allclose(t_comp, t_eager, rtol=1e-3, atol=0)


def test_learning_rate_decay_is_a_function_of_the_step():
    assert [lr_factor(s, 10, 0) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]  # the reference: constant
    assert [lr_factor(s, 10, 6) for s in (0, 5, 6, 7, 9)] == [1.0, 1.0, 1.0, 0.75, 0.25]
    # each network's own rate falls by the same share, and Adam's first update (about lr * sign(g)) with it: F's,
    # stepped once per iteration (D, G twice)
    deltas = {}
    for step in (0, 3):
        torch.manual_seed(0)
        args = tiny_args(lr=1e-3, f_lr=1e-4, d_lr=2e-3, total_iters=4, lr_decay_from=2)
        solver = Solver(args)
        before = snapshot(solver)
        solver.train_step(batch(args), step)
        want = dict(generator=1e-3, mapping_network=1e-4, style_encoder=1e-3, discriminator=2e-3)
        factor = 0.5 if step == 3 else 1.0
        assert {k: o.param_groups[0]['lr'] for k, o in solver.optims.items()} == pytest.approx(
            {k: v * factor for k, v in want.items()})
        deltas[step] = torch.cat([(a - b).flatten() for a, b in zip(before['mapping_network'],
                                                                    solver.nets.mapping_network.parameters())])
    ratio = deltas[3].abs().sum() / deltas[0].abs().sum()
    assert abs(ratio.item() - 0.5) < 1e-3


def test_compiled_training_step_matches_eager():
    """--compile captures the whole step (R1 included, through d_logits_and_r1) without graph breaks or
    recompilations after the first iteration, and computes the eager step's loss terms. aot_eager: the dynamo and
    AOTAutograd capture without inductor's code generation (minutes on 2 CPU cores; STARGAN_SLOW_TESTS runs it)."""
    (t_eager, _, _, _), (t_comp, stats, breaks, solver) = _compiled_vs_eager('aot_eager', 2)
    assert solver.logits_and_r1 is not None
    assert not breaks
    assert stats[0].get('unique_graphs', 0) >= 5 and stats[1] == stats[0]  # all compiled in iteration 1, no more
    _assert_terms_close(t_comp, t_eager)
    # the compiled modules keep the reference's state_dict keys (checkpoints unchanged)
    assert not any('_orig_mod' in k for k in solver.nets.generator.state_dict())


@pytest.mark.skipif(not os.environ.get('STARGAN_SLOW_TESTS'), reason='set STARGAN_SLOW_TESTS=1 (inductor: minutes)')
@pytest.mark.parametrize('w_hpf', [0, 1])
def test_inductor_training_step_matches_eager(w_hpf, random_wing):
    kw = dict(w_hpf=w_hpf, img_size=64, wing_path=random_wing) if w_hpf else {}
    (t_eager, _, _, _), (t_comp, stats, breaks, _) = _compiled_vs_eager('inductor', 2, **kw)
    assert not breaks and stats[1] == stats[0]
    _assert_terms_close(t_comp, t_eager)


def test_losses_move_in_the_right_direction():
    """A few iterations on one fixed batch: D learns to separate, the style reconstruction improves. In float64: in
    float32 these tiny networks' D loss hovers near its start (1.36 after 15 steps against 1.36 on one processor, 1.27
    on another), where rounding decides the sign; in float64 it falls from 1.51 to 0.26 (G/latent_sty 0.77 to 0.37)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        args = tiny_args(lr=1e-3, f_lr=1e-3)
        solver = Solver(args, 'cpu')
        b = Munch({k: v.double() if v.is_floating_point() else v for k, v in batch(args).items()})
        first = solver.train_step(b, 0)
        for i in range(1, 15):
            last = solver.train_step(b, i)
    finally:
        torch.set_default_dtype(default)
    assert last[0] + last[1] < first[0] + first[1]   # D/latent real + fake
    assert last[7] < first[7]                         # G/latent_sty


def write_dataset(root, n=4, size=32):
    from core.demo.data import make_demo_dataset
    return make_demo_dataset(str(root), n_train=n, n_val=2, size=size)


def train(args, total, resume=0):
    from main import main
    args = Munch(args, total_iters=total, resume_iter=resume)
    main(args)


def test_resume_equals_straight_run(tmp_path):
    data = write_dataset(tmp_path / 'data')
    common = dict(train_img_dir=os.path.join(data, 'train'), val_img_dir=os.path.join(data, 'val'), save_every=2,
                  print_every=1, ds_iter=5, lambda_ds=2.0, lr_decay_from=1)  # the resumed steps at 2/3 and 1/3
    a = tiny_args(checkpoint_dir=str(tmp_path / 'a'), sample_dir=str(tmp_path / 'sa'), **common)
    b = tiny_args(checkpoint_dir=str(tmp_path / 'b'), sample_dir=str(tmp_path / 'sb'), **common)
    train(a, 4)
    train(b, 2)
    torch.manual_seed(12345)  # whatever the process RNG holds: the data stream is a function of (seed, step)
    train(b, 4, resume=2)
    for kind in ('nets', 'nets_ema', 'optims'):
        sa = torch.load(tmp_path / 'a' / f'000004_{kind}.ckpt')
        sb = torch.load(tmp_path / 'b' / f'000004_{kind}.ckpt')
        for net in sa:
            if kind == 'optims':
                for k, st in sa[net]['state'].items():
                    assert torch.equal(st['exp_avg_sq'], sb[net]['state'][k]['exp_avg_sq'])
            else:
                for k in sa[net]:
                    assert torch.equal(sa[net][k], sb[net][k]), (kind, net, k)
    # the log of the resumed run continues from step 3 with the decayed lambda_ds
    log = [json.loads(line) for line in open(tmp_path / 'b' / 'train_log.jsonl')]
    assert [r['step'] for r in log] == [1, 2, 3, 4]
    assert abs(log[2]['G/lambda_ds'] - 2.0 * (1 - 3 / 5)) < 1e-9
    assert find_latest_step(str(tmp_path / 'b')) == 4


def test_short_run_writes_log_images_and_checkpoints(tmp_path):
    data = write_dataset(tmp_path / 'data')
    args = tiny_args(train_img_dir=os.path.join(data, 'train'), val_img_dir=os.path.join(data, 'val'),
                     checkpoint_dir=str(tmp_path / 'ckpt'), sample_dir=str(tmp_path / 'samples'), sample_every=2,
                     save_every=2, print_every=1)
    train(args, 2)
    names = sorted(os.listdir(tmp_path / 'samples'))
    assert names == ['000002_cycle_consistency.jpg', '000002_latent_psi_0.5.jpg', '000002_latent_psi_0.7.jpg',
                     '000002_latent_psi_1.0.jpg', '000002_reference.jpg', 'losses.png']
    with Image.open(tmp_path / 'samples' / 'losses.png') as im:  # the loss curves, beside the images
        assert im.format == 'PNG' and im.size[0] > 400
    S, N = args.img_size, args.val_batch_size
    assert Image.open(tmp_path / 'samples' / '000002_cycle_consistency.jpg').size == (N * S, 4 * S)
    assert Image.open(tmp_path / 'samples' / '000002_reference.jpg').size == ((N + 1) * S, (N + 1) * S)
    rows = 1 + min(args.num_domains, 5) * args.num_outs_per_domain
    assert Image.open(tmp_path / 'samples' / '000002_latent_psi_0.5.jpg').size == (N * S, rows * S)
    log = [json.loads(line) for line in open(tmp_path / 'ckpt' / 'train_log.jsonl')]
    assert [r['step'] for r in log] == [1, 2]
    assert {'D/latent_real', 'G/ref_cyc', 'G/lambda_ds'} <= set(log[0])
    for kind in ('nets', 'nets_ema', 'optims', 'state'):
        assert os.path.exists(tmp_path / 'ckpt' / f'000002_{kind}.ckpt')
    nets = torch.load(tmp_path / 'ckpt' / '000002_nets.ckpt')
    assert set(nets) == {'generator', 'mapping_network', 'style_encoder', 'discriminator'}
    assert json.load(open(tmp_path / 'ckpt' / 'args.json'))['img_size'] == S


def test_nonfinite_loss_stops_with_a_clear_message(tmp_path):
    torch.manual_seed(0)
    args = tiny_args(checkpoint_dir=str(tmp_path), print_every=2)
    solver = Solver(args, 'cpu')
    b = batch(args)
    b.x_src[0, 0, 0, 0] = float('nan')
    loaders = Munch(src=None, ref=None, val=None)

    class Fetch:
        def __init__(self, *a, **k):
            self.mode = a[3]

        def __next__(self):
            return b

    import core.solver as S
    orig = S.InputFetcher
    S.InputFetcher = Fetch
    try:
        with pytest.raises(NonFiniteLossError, match=r'at step 2: D/latent_real'):
            solver.train(loaders)
    finally:
        S.InputFetcher = orig
    assert not any(f.endswith('.ckpt') for f in os.listdir(tmp_path))


def test_a_compile_failure_names_the_flag(tmp_path, monkeypatch):
    import torch._dynamo.exc as dynamo_exc
    import core.solver as S
    args = tiny_args(checkpoint_dir=str(tmp_path), compile=True)
    solver = Solver(args, 'cpu')
    b = batch(args)

    class Fetch:
        def __init__(self, *a, **k):
            pass

        def __next__(self):
            return b

    def broken_step(inputs, step):
        raise dynamo_exc.InternalTorchDynamoError('a compiler bug')
    monkeypatch.setattr(S, 'InputFetcher', Fetch)
    monkeypatch.setattr(solver, 'train_step', broken_step)
    with pytest.raises(RuntimeError, match=r'--compile: torch.compile failed at step 1 .*without --compile'):
        solver.train(Munch(src=None, ref=None, val=None))


def test_sigint_saves_a_checkpoint_and_exits(tmp_path):
    data = write_dataset(tmp_path / 'data')
    cmd = [sys.executable, '-u', 'main.py', '--mode', 'train', '--device', 'cpu', '--img_size', '32',
           '--base_dim', '8', '--max_conv_dim', '16', '--hidden_dim', '16', '--style_dim', '16', '--w_hpf', '0',
           '--batch_size', '2', '--val_batch_size', '2', '--num_workers', '0', '--total_iters', '100000',
           '--print_every', '1', '--sample_every', '0', '--save_every', '0', '--eval_every', '0',
           '--train_img_dir', os.path.join(data, 'train'), '--val_img_dir', os.path.join(data, 'val'),
           '--checkpoint_dir', str(tmp_path / 'ckpt')]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        if 'Iteration [2/' in line:
            p.send_signal(signal.SIGINT)
            break
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out
    assert 'resume with --resume_iter' in out
    step = find_latest_step(str(tmp_path / 'ckpt'))
    assert step >= 2
    assert os.path.exists(tmp_path / 'ckpt' / ('%06d_state.ckpt' % step))
    assert not [f for f in os.listdir(tmp_path / 'ckpt') if f.endswith('.tmp')]


@pytest.mark.parametrize('impl', ['fused', 'foreach'])
def test_each_adam_implementation_updates_as_the_reference_loop(impl):
    """--optim_impl against PyTorch's per-parameter loop (the reference's Adam on the CPU): the demo's
    hyperparameters, five steps of random gradients in float64, so that only a formula difference could show."""
    from core.solver import optim_impl_kwargs
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (16,), (64, 64), (1,)]
    start = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=torch.float64) * 10 ** float(torch.randint(-6, 1, (), generator=g))
              for s in shapes] for _ in range(5)]
    finals = {}
    for name in ('loop', impl):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optim = torch.optim.Adam(params, lr=1e-3, betas=[0.0, 0.99], weight_decay=1e-4,
                                 **optim_impl_kwargs(Munch(optim_impl=name)))
        for step_grads in grads:
            for p, gr in zip(params, step_grads):
                p.grad = gr.clone()
            optim.step()
        finals[name] = [p.detach() for p in params]
    for a, b, p0 in zip(finals['loop'], finals[impl], start):
        assert not torch.equal(a, p0)
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize('speed', [dict(optim_impl='fused'), dict(memory_format='channels_last'),
                                   dict(optim_impl='fused', memory_format='channels_last')])
def test_training_steps_with_each_speed_setting_match_the_reference(speed):
    """Three training steps in float64 with Adam's fused implementation, the channels_last layout, and both,
    against the reference's step (the per-parameter loop, contiguous): loss terms and every
    parameter (networks and EMA copies) the same to rounding.
    The conv biases of G before an instance norm have a true gradient of zero (the norm removes them): what they get is
    rounding noise, which Adam scales up to moves of a few thousandths of a step whatever the implementation, and which
    changes no output. They are G's biases the reference moved by less than 1% of one step in three steps (G's other
    parameters move by ~1 step per update): those stay within that 1% here too; everything else within 1e-9."""
    lr = 1e-3
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = {}
        for name, kw in (('loop', dict(optim_impl='loop', memory_format='contiguous')), ('other', speed)):
            torch.manual_seed(0)
            solver = Solver(tiny_args(lr=lr, **kw), 'cpu')
            params = lambda: [(f'{i}.{k}.{n}', p.detach().clone()) for i, m in enumerate((solver.nets, solver.nets_ema))  # noqa: E731
                              for k in ('generator', 'mapping_network', 'style_encoder')
                              for n, p in m[k].named_parameters()]
            start = params()
            b = Munch({k: v.double() if v.is_floating_point() else v for k, v in batch(solver.args).items()})
            terms = [solver.train_step(b, i) for i in range(3)]
            out[name] = (torch.stack(terms), start, params())
    finally:
        torch.set_default_dtype(default)
    torch.testing.assert_close(out['other'][0], out['loop'][0], rtol=1e-9, atol=1e-12)
    # the biases of G the reference moved by less than 1% of a step: noise-driven (EMA copies included)
    noise_driven = {name.split('.', 1)[1] for (name, p0), (_, a) in zip(out['loop'][1], out['loop'][2])
                    if name.startswith('0.generator') and name.endswith('bias') and (a - p0).abs().max() < 1e-2 * lr}
    for (name, a), (_, b) in zip(out['loop'][2], out['other'][2]):
        if name.split('.', 1)[1] in noise_driven:
            assert (b - a).abs().max() < 1e-2 * lr, name
        else:
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-12, msg=name)


def test_optimiser_state_follows_its_parameter_layout():
    """A state saved in one layout and loaded under the other (a resume with another --memory_format) is put in the
    parameter's layout: fused Adam on the CPU reads the two as one flat buffer and would update wrongly otherwise."""
    from core.solver import match_state_layouts
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(8, 4, 3, 3, generator=g, dtype=torch.float64)
    grads = [torch.randn(p0.shape, generator=g, dtype=torch.float64) for _ in range(3)]
    finals = []
    for layout in (torch.contiguous_format, torch.channels_last):
        p = torch.nn.Parameter(p0.clone())
        saved = torch.optim.Adam([p], lr=1e-3, betas=[0.0, 0.99], fused=True)
        p.grad = grads[0].clone()
        saved.step()
        p = torch.nn.Parameter(p.detach().contiguous(memory_format=layout))
        optim = torch.optim.Adam([p], lr=1e-3, betas=[0.0, 0.99], fused=True)
        optim.load_state_dict(saved.state_dict())
        match_state_layouts({'net': optim})
        assert optim.state[p]['exp_avg'].stride() == p.stride()
        for gr in grads[1:]:
            p.grad = gr.contiguous(memory_format=layout)
            optim.step()
        finals.append(p.detach().contiguous())
    torch.testing.assert_close(finals[1], finals[0], rtol=1e-12, atol=1e-15)
