"""Regenerates every picture of the README (assets/) from the project's own commands and outputs.

    python scripts/make_assets.py              # runs the quickstart (`main.py --mode train --preset demo`, minutes
                                               # on a CPU) unless expr/demo already holds its final step, then:
    python scripts/make_assets.py --no_train   # only rebuild the pictures from expr/demo and docs/benchmarks.md

Writes (under 2 MB in all):
- assets/demo_reference.jpg, assets/demo_latent.jpg: the quickstart's reference grid and latent grid (psi 1.0) at
  its last step, enlarged with nearest-neighbour to 96-px tiles (3x the demo's 32 px) so that they can be seen;
- assets/demo_losses.png: the 14 loss terms and lambda_ds over the quickstart, from its train_log.jsonl;
- assets/demo_score.json: the quickstart's score (core/demo/score.py), the numbers the README quotes;
- assets/speed_memory.png: seconds per iteration and peak GPU memory, the H100 figures measured in
  docs/benchmarks.md (read from its first table, not re-measured here);
- assets/studio.png: the studio page (`main.py --mode serve --preset demo`) in a headless Chromium, driven by
  scripts/studio_browser.py as the browser test drives it: a sample square translated into triangles with three
  references of the gallery (skipped, with a message, without Playwright and Chromium; --no_screenshot).
assets/representative/ (the authors' images, scripts/download.sh representative-images) is git-ignored.
"""
import argparse
import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
ASSETS = os.path.join(REPO, 'assets')
TILE = 96  # pixels of an enlarged tile


def demo_args():
    from core.config import parse_args
    return parse_args(['--mode', 'train', '--preset', 'demo'])


def run_demo(args):
    """The quickstart's main job, exactly as the README gives it."""
    cmd = [sys.executable, 'main.py', '--mode', 'train', '--preset', 'demo']
    print('$', ' '.join(cmd[1:]))
    subprocess.run(cmd, cwd=REPO, check=True)


def enlarge(src, dst, scale):
    from PIL import Image
    img = Image.open(src).convert('RGB')
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(dst, quality=92)
    print('wrote', os.path.relpath(dst, REPO), img.size)


def read_benchmarks(md_path):
    """The first table of docs/benchmarks.md: [(setting, mode, s_per_iter, peak_gib, ref_s, ref_gib)]."""
    rows, setting = [], None
    with open(md_path) as f:
        text = f.read()
    table = text[text.index('| setting | mode |'):]
    for line in table.splitlines()[2:]:
        if not line.startswith('|'):
            break
        cells = [c.strip() for c in line.strip('|').split('|')]
        setting = re.sub(r'\s*\(.*\)', '', cells[0]) or setting
        s = float(cells[2].strip('*'))
        gib = float(cells[5].split()[0])
        ref = re.findall(r'([\d.]+) s compute-only, ([\d.]+) GiB', cells[6])
        rows.append((setting, cells[1].replace(' (default)', '').replace('`', ''), s, gib,
                     float(ref[0][0]) if ref else None, float(ref[0][1]) if ref else None))
    return rows


def speed_chart(md_path, png_path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = read_benchmarks(md_path)
    bars = []  # (label, seconds, GiB, colour)
    for setting in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == setting]
        ref = next((r for r in mine if r[4] is not None), None)
        if ref:
            bars.append((f'{setting}\nreference', ref[4], ref[5], 'tab:gray'))
        for r in mine:
            bars.append((f'{setting}\nours, {r[1]}', r[2], r[3], 'tab:blue' if 'bf16' not in r[1] else 'tab:cyan'))
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    labels = [b[0] for b in bars]
    for ax, k, unit in ((axes[0], 1, 's / iteration (lower is better)'), (axes[1], 2, 'peak GPU memory, GiB')):
        vals = [b[k] for b in bars]
        ax.barh(range(len(bars)), vals, color=[b[3] for b in bars])
        for i, v in enumerate(vals):
            ax.text(v, i, f' {v:g}', va='center', fontsize=8)
        ax.set_yticks(range(len(bars)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(unit, fontsize=9)
        ax.set_xlim(0, max(vals) * 1.18)
        ax.grid(axis='x', alpha=0.3)
    axes[1].set_yticks([])
    fig.suptitle('Training at 256 px, batch 8, one H100 80GB: measured (docs/benchmarks.md, 2026-11-27; '
                 'the reference\'s figures are the issue\'s, same GPU type)', fontsize=9)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
    print('wrote', os.path.relpath(png_path, REPO))


def studio_screenshot(png_path, photo='expr/demo_data/val/square/0003.png', domain='triangle', n_refs=3):
    """The page on the quickstart's network, after one reference-guided request, as assets/studio.png."""
    os.chdir(REPO)  # the demo preset's folders are relative to the repository
    sys.path.insert(0, os.path.join(REPO, 'scripts'))
    import studio_browser
    try:
        import playwright  # noqa: F401
    except ImportError:
        return print('assets/studio.png not made: no Playwright (pip install playwright)')
    if studio_browser.find_chromium() is None:
        return print('assets/studio.png not made: no Chromium (apt-get install chromium)')
    import torch
    from core.config import parse_args
    from core.inference.studio import Studio, build_page, launch
    args = parse_args(['--mode', 'serve', '--preset', 'demo'])
    page = build_page(Studio.from_args(args, torch.device('cpu')))
    url = launch(page, port=0, block=False, quiet=True)
    try:
        r = studio_browser.drive(url, os.path.join(REPO, photo), domain, n_refs=n_refs, screenshot=png_path)
    finally:
        page.close()
    outside = [u for u in r['requests'] if not studio_browser.is_local(u, url.rstrip('/'))]
    print(f'wrote assets/studio.png ({r["status"]}; {len(r["requests"])} requests, {len(outside)} outside)')


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--no_train', action='store_true', help='do not run the quickstart; use expr/demo as it is')
    p.add_argument('--no_screenshot', action='store_true', help='do not make assets/studio.png (needs a browser)')
    opt = p.parse_args()
    args = demo_args()
    step = args.total_iters
    ckpt_dir = os.path.join(REPO, args.checkpoint_dir)
    sample_dir = os.path.join(REPO, args.sample_dir)
    final = os.path.join(sample_dir, '%06d_reference.jpg' % step)
    if not os.path.exists(final) and not opt.no_train:
        run_demo(args)
    if not os.path.exists(final):
        sys.exit(f'{final} is missing: run `python main.py --mode train --preset demo` first (or drop --no_train)')
    os.makedirs(ASSETS, exist_ok=True)
    scale = max(1, TILE // args.img_size)
    enlarge(final, os.path.join(ASSETS, 'demo_reference.jpg'), scale)
    enlarge(os.path.join(sample_dir, '%06d_latent_psi_1.0.jpg' % step), os.path.join(ASSETS, 'demo_latent.jpg'),
            scale)
    from core.machinery.plots import plot_losses
    plot_losses(os.path.join(ckpt_dir, 'train_log.jsonl'), os.path.join(ASSETS, 'demo_losses.png'),
                title='The quickstart\'s 14 loss terms and lambda_ds (python main.py --mode train --preset demo)')
    print('wrote assets/demo_losses.png')
    score = os.path.join(ckpt_dir, 'demo_score_%06d.json' % step)
    if os.path.exists(score):
        shutil.copy(score, os.path.join(ASSETS, 'demo_score.json'))
        print('wrote assets/demo_score.json')
    speed_chart(os.path.join(REPO, 'docs', 'benchmarks.md'), os.path.join(ASSETS, 'speed_memory.png'))
    if not opt.no_screenshot:
        studio_screenshot(os.path.join(ASSETS, 'studio.png'))
    total = sum(os.path.getsize(os.path.join(ASSETS, f)) for f in os.listdir(ASSETS)
                if os.path.isfile(os.path.join(ASSETS, f)))
    print(f'assets/: {total / 1e6:.2f} MB')


if __name__ == '__main__':
    main()
