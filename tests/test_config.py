"""core/config.py: the two-stage parsing of presets, abbreviations, errors, the args.json round trip, the one home of
the defaults."""
import argparse
import json

import pytest

from core.config import PRESETS, complete_args, defaults, load_config, parse_args, save_config, summary


def test_every_reference_default_is_the_reference_value():
    d = defaults()
    assert (d.img_size, d.num_domains, d.latent_dim, d.hidden_dim, d.style_dim) == (256, 2, 16, 512, 64)
    assert (d.lambda_reg, d.lambda_cyc, d.lambda_sty, d.lambda_ds, d.ds_iter, d.w_hpf) == (1, 1, 1, 1, 100000, 1)
    assert (d.total_iters, d.batch_size, d.val_batch_size, d.lr, d.f_lr, d.beta1, d.beta2) == \
        (100000, 8, 32, 1e-4, 1e-6, 0.0, 0.99)
    assert (d.print_every, d.sample_every, d.save_every, d.eval_every, d.seed) == (10, 5000, 10000, 50000, 777)
    assert d.mode is None and d.preset is None


def test_a_preset_fills_the_flags_not_given():
    args = parse_args(['--mode', 'train', '--preset', 'afhq'])
    for k, v in PRESETS['afhq'].items():
        assert args[k] == v
    assert args.batch_size == 8  # not in the preset: the reference default


@pytest.mark.parametrize('argv', [['--batch_size', '4'], ['--batch', '4'], ['--batch_size=4'], ['--bat=4']])
def test_a_flag_given_in_any_form_wins_over_the_preset(argv):
    args = parse_args(['--mode', 'train', '--preset', 'demo'] + argv)
    assert args.batch_size == 4
    assert args.img_size == PRESETS['demo']['img_size']


def test_the_preset_flag_itself_may_be_abbreviated_and_come_last():
    args = parse_args(['--mode', 'train', '--total_iters', '7', '--pres', 'demo'])
    assert args.preset == 'demo' and args.total_iters == 7 and args.img_size == PRESETS['demo']['img_size']


def test_unknown_and_ambiguous_flags_are_errors(capsys):
    with pytest.raises(SystemExit):
        parse_args(['--mode', 'train', '--batchsize', '4'])
    assert 'unrecognized arguments: --batchsize' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(['--mode', 'train', '--lambda', '2'])  # lambda_reg, lambda_cyc, ...
    assert 'ambiguous option' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(['--mode', 'train', '--preset', 'nope'])


def test_args_json_round_trip(tmp_path):
    args = parse_args(['--mode', 'train', '--preset', 'demo', '--lr', '3e-4'])
    fname = tmp_path / 'ckpt' / 'args.json'
    save_config(args, str(fname))
    back = load_config(str(fname))
    assert back == args and isinstance(back.lr, float) and back.lr == 3e-4
    assert json.loads(fname.read_text())['preset'] == 'demo'
    # what training wrote parses back into the same configuration
    argv = [f'--{k}={v}' for k, v in back.items() if v is not None and not isinstance(v, bool)]
    argv += [f'--{k}' for k, v in back.items() if v is True]
    assert parse_args(argv) == args


def test_complete_args_fills_a_reference_namespace():
    """Downstream code calls build_model with the reference's own argparse Namespace (no --base_dim etc.)."""
    ns = argparse.Namespace(img_size=64, num_domains=3, latent_dim=16, style_dim=64, w_hpf=0)
    args = complete_args(ns)
    assert args.img_size == 64 and args.num_domains == 3
    assert args.max_conv_dim == 512 and args.base_dim == 0 and args.hidden_dim == 512


def test_the_start_up_summary_is_short():
    args = parse_args(['--mode', 'train', '--preset', 'demo'])
    line = summary(args, 'cpu')
    assert 'mode train' in line and 'preset demo' in line and 'device cpu' in line
    assert args.train_img_dir in line and args.checkpoint_dir in line
    assert len(line) < 400


def test_per_network_learning_rates_default_to_the_reference():
    """--d_lr / --e_lr unset (0): D and E learn at --lr, F at --f_lr, as the reference; set, they win."""
    from core.solver import Solver
    args = parse_args(['--mode', 'train', '--preset', 'demo', '--device', 'cpu', '--base_dim', '8',
                       '--max_conv_dim', '16', '--hidden_dim', '16'])
    assert (args.d_lr, args.e_lr) == (0, 0)
    lrs = {k: o.param_groups[0]['lr'] for k, o in Solver(args).optims.items()}
    assert lrs == dict(generator=args.lr, mapping_network=args.f_lr, style_encoder=args.lr, discriminator=args.lr)
    args.update(d_lr=3e-3, e_lr=2e-4)
    lrs = {k: o.param_groups[0]['lr'] for k, o in Solver(args).optims.items()}
    assert lrs == dict(generator=args.lr, mapping_network=args.f_lr, style_encoder=2e-4, discriminator=3e-3)


def test_each_demo_task_has_folders_of_its_own():
    shapes = parse_args(['--mode', 'train', '--preset', 'demo'])
    bars = parse_args(['--mode', 'train', '--preset', 'demo', '--demo_task', 'bars'])
    assert shapes.train_img_dir == 'expr/demo_data/train' and bars.train_img_dir == 'expr/demo_data_bars/train'
    assert bars.src_dir == 'expr/demo_data_bars/src' and bars.studio_refs == 'expr/demo_data_bars/val'
    mine = parse_args(['--mode', 'train', '--preset', 'demo', '--demo_task', 'bars', '--train_img_dir', 'x/train'])
    assert mine.train_img_dir == 'x/train'
