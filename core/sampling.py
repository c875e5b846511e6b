"""--mode sample: the reference grid, the latent grids and the two interpolation videos of a trained model.

    sample(nets_ema, args, src, ref)   # src, ref: Munch(x, y) batches from --src_dir and --ref_dir; writes --result_dir

--outputs chooses among reference (reference.jpg), latent (latent_psi_{0.5,0.7,1.0}.jpg), video_ref and video_latent
(.mp4); a bar shows the outputs, and each video shows its frames (on a CPU a 256-px video takes ten minutes or more).
"""
import os

import torch
from tqdm import tqdm

from core import utils, video

@torch.no_grad()
def sample(nets_ema, args, src, ref):
    os.makedirs(args.result_dir, exist_ok=True)
    outputs = args.outputs.split(',')  # checked by core/config.py
    y_trg_list, z_trg_list = utils.latent_grid_inputs(args, src.x.size(0), src.x.device)

    def reference(fname):
        utils.translate_using_reference(nets_ema, args, src.x, ref.x, ref.y, fname)

    def latent(fname):  # the reference has this code but never calls it in sample mode
        for psi in utils.PSIS:
            utils.translate_using_latent(nets_ema, args, src.x, y_trg_list, z_trg_list, psi,
                                         fname % psi, generator=utils.average_style_generator(args))

    def video_ref(fname):
        video.video_ref(nets_ema, args, src.x, ref.x, ref.y, fname, progress=True)

    def video_latent(fname):
        video.video_latent(nets_ema, args, src.x, y_trg_list, z_trg_list, 1.0, fname,
                           generator=utils.average_style_generator(args), progress=True)

    jobs = dict(reference=('reference.jpg', reference), latent=('latent_psi_%.1f.jpg', latent),
                video_ref=('video_ref.mp4', video_ref), video_latent=('video_latent.mp4', video_latent))
    written = []
    for name in tqdm(outputs, desc='sample', unit='output'):
        basename, make = jobs[name]
        fname = os.path.join(args.result_dir, basename)
        tqdm.write(f'Working on {fname}...')
        try:
            make(fname)
            written.append(fname)
        except (video.FFmpegNotFoundError, ValueError) as e:
            tqdm.write(f'Skipping {basename}: {e} (the other outputs are written)')
    return written
