"""Training learns: a small variant of the demo trained from scratch translates clearly better than chance, and the
same run with the discriminator's fake term of the wrong sign (a known failure of StarGAN v2 reimplementations,
patched in here) does not. Both are asserted, so this test fails when learning is broken.

    python -m pytest -q tests/test_learning.py        # about LEARNING_SECONDS on 2 idle CPU cores

The run goes through main.main with --preset demo (data drawn into a temporary folder, the score written as JSON
beside the checkpoints by the demo's own hook), so it also checks that wiring.
"""
import json

import pytest
import torch

import core.losses
from core.config import parse_args

# a smaller demo: 16 px, narrow networks, short; what the test changes from the demo preset
SMALL = dict(img_size=16, base_dim=8, max_conv_dim=32, hidden_dim=32, style_dim=16, latent_dim=8, total_iters=300,
             ds_iter=300, print_every=50, sample_every=0, save_every=0, val_batch_size=8)
LEARNED = 0.8      # domain accuracy the correct run must reach (chance 0.5, a generator keeping the source's shape 0)
BROKEN = 0.3       # ... and that the broken run must stay below
LEARNING_SECONDS = 120


def run_demo(tmp_path, flip_fake_sign=False, monkeypatch=None):
    from main import main
    if flip_fake_sign:
        adv_loss = core.losses.adv_loss

        def wrong_sign(logits, target):
            # only the D loss uses target 0 (its fake term): -BCE(D(x_fake), 0) rewards D for calling fakes real
            return -adv_loss(logits, 0) if target == 0 else adv_loss(logits, target)
        monkeypatch.setattr(core.losses, 'adv_loss', wrong_sign)
    args = parse_args(['--mode', 'train', '--preset', 'demo', '--device', 'cpu',
                       '--train_img_dir', str(tmp_path / 'data' / 'train'),
                       '--val_img_dir', str(tmp_path / 'data' / 'val'),
                       '--checkpoint_dir', str(tmp_path / 'ckpt'), '--sample_dir', str(tmp_path / 'samples')])
    args.update(SMALL)
    torch.manual_seed(args.seed)
    main(args)
    return json.loads((tmp_path / 'ckpt' / ('demo_score_%06d.json' % args.total_iters)).read_text())


@pytest.mark.usefixtures('one_thread')
def test_training_learns_and_a_flipped_fake_term_does_not(tmp_path, monkeypatch):
    good = run_demo(tmp_path / 'good')
    broken = run_demo(tmp_path / 'broken', flip_fake_sign=True, monkeypatch=monkeypatch)
    print('correct loss:', good)
    print('fake term of the wrong sign:', broken)
    assert good['domain_accuracy'] >= LEARNED, good
    assert broken['domain_accuracy'] <= BROKEN, broken
