"""The training curves as one PNG, from the JSON-lines log the Solver writes (no TensorBoard needed).

    plot_losses('expr/demo/checkpoints/train_log.jsonl', 'expr/demo/samples/losses.png')
    python -m core.machinery.plots expr/demo/checkpoints/train_log.jsonl losses.png

Small multiples: one panel per loss term of the D and G steps (latent-guided and reference-guided in one panel, as
they are the same objective with a different source of the style), and lambda_ds: 14 terms + lambda_ds in 8 panels.
"""
import json
import os
import sys

# the two halves of each panel: (title, log key of the latent step, log key of the reference step)
PANELS = [('D: real (BCE, target 1)', 'D/latent_real', 'D/ref_real'),
          ('D: fake (BCE, target 0)', 'D/latent_fake', 'D/ref_fake'),
          ('D: R1 penalty', 'D/latent_reg', 'D/ref_reg'),
          ('G: adversarial', 'G/latent_adv', 'G/ref_adv'),
          ('G: style reconstruction', 'G/latent_sty', 'G/ref_sty'),
          ('G: diversity (maximised)', 'G/latent_ds', 'G/ref_ds'),
          ('G: cycle consistency', 'G/latent_cyc', 'G/ref_cyc'),
          ('lambda_ds (diversity weight)', 'G/lambda_ds', None)]


def read_log(jsonl_path):
    """The records of train_log.jsonl (one dict per logged step); a run resumed from an earlier step appends to the
    file, so for a step logged twice the later record wins."""
    by_step = {}
    with open(jsonl_path) as f:
        for line in f:
            line = line.strip()
            if line:
                rec = json.loads(line)
                by_step[rec['step']] = rec
    return [by_step[s] for s in sorted(by_step)]


def plot_losses(jsonl_path, png_path, title=None):
    """Writes the curves of train_log.jsonl to png_path (written to a temporary name, then renamed, so that a viewer
    never reads half a file); returns png_path, or None when the log has no records yet."""
    import matplotlib
    matplotlib.use('Agg')  # files only: no display needed, safe in a training process
    import matplotlib.pyplot as plt

    records = read_log(jsonl_path)
    if not records:
        return None
    steps = [r['step'] for r in records]
    fig, axes = plt.subplots(2, 4, figsize=(13, 5.6), sharex=True)
    for ax, (name, latent, ref) in zip(axes.flat, PANELS):
        ax.plot(steps, [r.get(latent, float('nan')) for r in records], color='tab:blue', lw=1.3,
                label='latent' if ref else None)
        if ref:
            ax.plot(steps, [r.get(ref, float('nan')) for r in records], color='tab:orange', lw=1.3, label='reference')
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
    for ax in axes[-1]:
        ax.set_xlabel('iteration', fontsize=9)
    axes.flat[0].legend(fontsize=8, loc='best')
    fig.suptitle(title or f'Training losses ({os.path.basename(jsonl_path)}, step {steps[-1]})', fontsize=11)
    fig.tight_layout()
    os.makedirs(os.path.dirname(png_path) or '.', exist_ok=True)
    tmp = png_path + '.tmp.png'
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, png_path)
    return png_path


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__.split('\n\n')[1])
    print(plot_losses(sys.argv[1], sys.argv[2]))
