"""Training learns: the demo trained from scratch translates clearly better than chance, and the
same run with the discriminator's fake term of the wrong sign (a known failure of StarGAN v2 reimplementations,
patched in here) does not. Both are asserted, so this test fails when learning is broken.

    STARGAN_SLOW_TESTS=1 python -m pytest -q tests/test_learning.py -s     # -s prints both scores

Not yet within the issue's 2-minute budget: at 400 iterations (about 2 minutes for both runs side by side on 2
idle cores, estimated) the correct run was not reliably above the broken one (measured: domain accuracy 0.44 vs
0.21, latent 0.38 vs 0.38). At the demo's 1,000 iterations the latent-guided translations separate them (measured
with the demo preset: latent domain accuracy 0.95 correct vs 0.30 broken; reference-guided 0.54 vs 0.44, which does
not separate yet), so the test trains as long as the demo (about 6 minutes) and runs only with STARGAN_SLOW_TESTS=1
until a faster-learning small variant is found.
"""
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest

# the demo itself, without its debug images and checkpoints
SMALL = dict(print_every=100, sample_every=0, save_every=0)
# the latent-guided translations: the correct run well above a coin flip (0.5) and above a generator that keeps
# the source's shape (0); the broken run no better than a coin flip. (Reference-guided accuracy is printed, not
# asserted: it does not separate the two runs yet, see above.)
LEARNED_LATENT = 0.75
BROKEN_LATENT = 0.5


def run_demo(root, flip_fake_sign=False, **overrides):
    """Trains the small demo under root; returns the score JSON written by main.py's demo hook."""
    import torch

    import core.losses
    from core.config import parse_args
    from main import main
    torch.set_num_threads(1)
    if flip_fake_sign:
        adv_loss = core.losses.adv_loss

        def wrong_sign(logits, target):
            # only the D loss uses target 0 (its fake term): -BCE(D(x_fake), 0) rewards D for calling fakes real
            return -adv_loss(logits, 0) if target == 0 else adv_loss(logits, target)
        core.losses.adv_loss = wrong_sign  # a process of its own: nothing to restore
    args = parse_args(['--mode', 'train', '--preset', 'demo', '--device', 'cpu',
                       '--train_img_dir', f'{root}/data/train', '--val_img_dir', f'{root}/data/val',
                       '--checkpoint_dir', f'{root}/ckpt', '--sample_dir', f'{root}/samples'])
    args.update(SMALL, **overrides)
    main(args)
    with open(f'{root}/ckpt/demo_score_{args.total_iters:06d}.json') as f:
        return json.load(f)


@pytest.mark.skipif(not os.environ.get('STARGAN_SLOW_TESTS'), reason='about 6 minutes on 2 cores: STARGAN_SLOW_TESTS=1')
def test_training_learns_and_a_flipped_fake_term_does_not(tmp_path):
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context('spawn')) as pool:
        good = pool.submit(run_demo, str(tmp_path / 'good'))
        broken = pool.submit(run_demo, str(tmp_path / 'broken'), flip_fake_sign=True)
        good, broken = good.result(), broken.result()
    print('\ncorrect loss:', good)
    print('fake term of the wrong sign:', broken)
    assert good['latent_domain_accuracy'] >= LEARNED_LATENT, good
    assert broken['latent_domain_accuracy'] <= BROKEN_LATENT, broken
