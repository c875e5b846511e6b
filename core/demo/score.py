"""The demo's score: how well the EMA networks translate the demo's validation images, measured with what the data's
drawer knows (core/demo/data.measure: the kind of shape from the share of its bounding box it fills, its place and
size from its edges, the colours from the border ring and the foreground), no learned classifier.

    scores = score_demo(nets_ema, args, device, step=300)  # prints them; writes checkpoint_dir/demo_score_000300.json
    python -m core.demo.score --preset demo --resume_iter 300  # the same for a saved checkpoint

Every source image of --val_img_dir (all of them, in file order) is translated into every other domain:
- reference-guided, with the style E(x_ref, y_trg) of every validation image x_ref of that domain;
- latent-guided, with the styles F(z, y_trg) of NUM_Z fixed latent codes (seeded by --seed, psi 1).

The numbers (colours are RGB in [0, 1]; a "colour distance" is the mean absolute difference over the six numbers of
the shape colour and the background colour):
- domain_accuracy: the fraction of reference-guided translations whose measured shape is the target domain's.
  A generator that keeps the source's shape scores 0; a coin flip 0.5; an image with neither shape counts as wrong.
- latent_domain_accuracy: the same for the latent-guided translations.
- style_error: the colour distance between each reference-guided translation and its reference. 0: the reference's
  colours exactly. style_error_chance is its chance level: the mean colour distance between two different
  validation images (what colours that ignore the reference score; about 0.3).
- style_error_to_source: the colour distance between each translation and its source (near style_error_chance
  when the colours come from the reference rather than the source).
- content_error: how far each reference-guided translation's shape is from its source's: the distance between the
  centres plus the difference of the half-widths, as fractions of the image side. 0: the source's place and size.
  content_error_chance is what a generator that ignores its source scores: the same distance between each reference
  and the sources it styles (the reference itself scored as the output). latent_content_error: the same for the
  latent-guided translations.
- latent_diversity: the mean colour distance between the translations of one source into one domain with the
  NUM_Z different latent codes, over all pairs. 0: every code gives the same colours (mode collapse); the data's own
  spread is style_error_chance.
"""
import itertools
import json
import os

import torch
from munch import Munch

from core.demo.data import TASKS, content_distance, measure

NUM_Z = 8


def pick(m, index):
    """The measurements (core.demo.data.measure) of the images at index (a list or a boolean mask)."""
    return Munch(fg=m.fg[index], bg=m.bg[index], centre=m.centre[index], half_width=m.half_width[index])


def colour_distance(a, b):
    """Mean |a - b| over the six numbers of (fg, bg); a, b: Munch(fg, bg) of (N, 3) tensors -> (N,)."""
    return torch.cat([(a.fg - b.fg).abs(), (a.bg - b.bg).abs()], dim=1).mean(dim=1)


@torch.no_grad()
def score_translations(nets, x_src, y_src, x_ref, y_ref, latent_dim, seed=777, task='shapes'):
    """The scores (a dict of floats, see the module docstring) of nets on sources (x_src, y_src) and references,
    the shapes read as task's (core.demo.data.TASKS)."""
    device = x_src.device
    measure_ = lambda x: measure(x, task)  # noqa: E731
    m_src, m_ref = measure_(x_src), measure_(x_ref)
    s_ref = nets.style_encoder(x_ref, y_ref)
    correct, err, err_src, content, content_chance = [], [], [], [], []
    for j in range(x_ref.size(0)):
        keep = y_src != y_ref[j]
        if not keep.any():
            continue
        x = x_src[keep]
        x_fake = nets.generator(x, s_ref[j:j + 1].expand(x.size(0), -1))
        m, m_kept = measure_(x_fake), pick(m_src, keep.cpu())
        correct.append(m.shape == int(y_ref[j]))
        err.append(colour_distance(m, pick(m_ref, [j])))
        err_src.append(colour_distance(m, m_kept))
        content.append(content_distance(m, m_kept))
        content_chance.append(content_distance(pick(m_ref, [j] * len(m_kept.fg)), m_kept))  # the reference as output

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(NUM_Z, latent_dim, generator=g).to(device)
    latent_correct, latent_content, diversity = [], [], []
    num_domains = int(max(y_src.max(), y_ref.max())) + 1
    for i in range(x_src.size(0)):
        for y in range(num_domains):
            if y == int(y_src[i]):
                continue
            y_trg = torch.full((NUM_Z,), y, dtype=torch.long, device=device)
            x_fake = nets.generator(x_src[i:i + 1].expand(NUM_Z, -1, -1, -1), nets.mapping_network(z, y_trg))
            m = measure_(x_fake)
            latent_correct.append(m.shape == y)
            latent_content.append(content_distance(m, pick(m_src, [i] * NUM_Z)))
            a, b = zip(*itertools.combinations(range(NUM_Z), 2))
            a, b = list(a), list(b)
            diversity.append(colour_distance(pick(m, a), pick(m, b)))

    n = x_ref.size(0)
    a, b = zip(*itertools.combinations(range(n), 2))
    a, b = list(a), list(b)
    chance = colour_distance(pick(m_ref, a), pick(m_ref, b))
    mean = lambda ts: float(torch.cat(ts).float().mean())  # noqa: E731
    return dict(domain_accuracy=mean(correct), latent_domain_accuracy=mean(latent_correct),
                style_error=mean(err), style_error_chance=float(chance.mean()),
                style_error_to_source=mean(err_src), content_error=mean(content),
                content_error_chance=mean(content_chance), latent_content_error=mean(latent_content),
                latent_diversity=mean(diversity),
                num_reference_translations=int(torch.cat(correct).numel()),
                num_latent_translations=int(torch.cat(latent_correct).numel()))


def load_val(val_img_dir, img_size, device, num_domains=None):
    """Every image of val_img_dir in file order, as one batch (x, y) on the device."""
    from core.data_loader import get_test_loader
    loader = get_test_loader(val_img_dir, img_size=img_size, batch_size=10 ** 6, shuffle=False, num_workers=0,
                             num_domains=num_domains)
    x, y = next(iter(loader))
    return x.to(device), y.to(device)


def score_demo(nets_ema, args, device, step=None, write=True):
    """Scores nets_ema on args.val_img_dir (sources and references); prints the numbers and, with write, saves them
    with the step to checkpoint_dir/demo_score_{step:06d}.json. Returns the dict."""
    x, y = load_val(args.val_img_dir, args.img_size, device, args.num_domains)
    was_training = {k: m.training for k, m in nets_ema.items()}
    for m in nets_ema.values():
        m.eval()
    try:
        task = args.get('demo_task', 'shapes')
        scores = score_translations(nets_ema, x, y, x, y, args.latent_dim, seed=args.seed, task=task)
    finally:
        for k, m in nets_ema.items():
            m.train(was_training[k])
    scores = dict(step=step, task=task, domains=list(TASKS[task][:args.num_domains]), **scores)
    print('Demo score%s: domain accuracy %.1f%% (latent %.1f%%; chance 50%%), style error %.3f (chance %.3f; '
          'to the source %.3f), content error %.3f (latent %.3f; ignoring the source %.3f), latent diversity %.3f' % (
              '' if step is None else f' at step {step}', 100 * scores['domain_accuracy'],
              100 * scores['latent_domain_accuracy'], scores['style_error'], scores['style_error_chance'],
              scores['style_error_to_source'], scores['content_error'], scores['latent_content_error'],
              scores['content_error_chance'], scores['latent_diversity']))
    if write:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        fname = os.path.join(args.checkpoint_dir, 'demo_score_%06d.json' % (step or 0))
        with open(fname, 'w') as f:
            json.dump(scores, f, indent=2)
        print(f'Wrote {fname}')
    return scores


def main(argv=None):
    from core.checkpoint import CheckpointIO, find_latest_step
    from core.config import parse_args
    from core.machinery.distributed import resolve_device
    from core.model import build_model
    args = parse_args(['--mode', 'sample'] + list(argv if argv is not None else __import__('sys').argv[1:]))
    device = resolve_device(args.device)
    if args.num_threads > 0:
        torch.set_num_threads(args.num_threads)
    step = args.resume_iter if args.resume_iter > 0 else find_latest_step(args.checkpoint_dir)
    _, nets_ema = build_model(args)
    nets = {k: v for k, v in nets_ema.items() if k != 'fan'}
    CheckpointIO(os.path.join(args.checkpoint_dir, '{:06d}_nets_ema.ckpt'), **nets).load(step)
    for m in nets_ema.values():
        m.to(device)
    return score_demo(nets_ema, args, device, step=step)


if __name__ == '__main__':
    main()
