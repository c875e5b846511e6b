"""How much of the source image a translation keeps: the other side of LPIPS diversity (docs/skip_study.md).

    meter = IntactnessMeter(device, args.lpips_alexnet_weights, fan=landmark_fan(args, nets, device))
    meter.update(x_src, group_of_images)        # per batch: the sources and their num_outs_per_domain translations
    values = meter.pop_task('latent', 'female2male')
    # {'LPIPS_to_source_latent/female2male': ..., 'landmark_shift_latent/female2male': ... (with a FAN)}

- LPIPS to source: the mean LPIPS distance between each source image and each of its translations (same LPIPS as
  the diversity: metrics/lpips.py); per batch the mean over outputs and images, per task the mean over batches, as the
  diversity is averaged. Lower = more of the source kept. It rewards the identity as diversity rewards distortion:
  read the two together.
- landmark shift (faces): the FAN's 98 landmarks of source and translation, the mean distance between corresponding
  landmarks divided by the source's inter-ocular distance (between the centres of landmarks 60-67+96 and 68-75+97,
  core/align.py). Measures pose and geometry kept; 0 = the same landmarks. Needs wing.ckpt (landmark_fan says when).

metrics/eval.py calls this for every task and both modes (INTACT_{step}_{mode}.json, the printed summary).
"""
import os

import numpy as np
import torch

from core.align import LEFT_EYE, RIGHT_EYE
from metrics.lpips import load_lpips

LPIPS_KEY = 'LPIPS_to_source'
LANDMARK_KEY = 'landmark_shift'


def landmark_fan(args, nets, device):
    """The FAN for the landmark shift, or None: used with w_hpf > 0 and FAN masks (faces) or --eval_landmarks, when
    --wing_path exists. Reuses the networks' own FAN when they have one (--skip hpf)."""
    from core.wing import FAN
    wanted = (args.w_hpf > 0 and args.hpf_masks == 'fan') or args.eval_landmarks
    if not wanted:
        return None
    if isinstance(nets.get('fan'), FAN):
        return nets.fan
    if not (args.wing_path and os.path.isfile(args.wing_path)):
        if args.eval_landmarks:
            raise FileNotFoundError(f'--eval_landmarks needs the FAN weights: --wing_path {args.wing_path} not found')
        print(f'landmark shift not measured: no FAN weights at --wing_path {args.wing_path}')
        return None
    return FAN(fname_pretrained=args.wing_path, trust_pickle=args.trust_pickle).to(device).eval().requires_grad_(False)


def lpips_to_source(model, x_src, group_of_images):
    """Mean over outputs and images of LPIPS(x_src, output): a 0-d tensor. Each image through AlexNet once."""
    k = len(group_of_images)
    fmaps = model.feature_maps(torch.cat([x_src, *group_of_images]))     # per layer (K+1)·N maps
    fmaps = [f.view(k + 1, x_src.size(0), *f.shape[1:]) for f in fmaps]  # per layer (K+1, N, C, h, w)
    return torch.stack([model.distance([f[0] for f in fmaps], [f[j] for f in fmaps], model.lin).mean()
                        for j in range(1, k + 1)]).mean()


def inter_ocular(landmarks):
    """(N,) distance between the eye centres of (N, 98, 2) landmarks."""
    return (landmarks[:, LEFT_EYE].mean(dim=1) - landmarks[:, RIGHT_EYE].mean(dim=1)).norm(dim=1)


def landmark_shift(lm_src, lm_out, min_iod=1.0):
    """(N,) mean distance between corresponding landmarks over the source's inter-ocular distance (floored at
    min_iod pixels, so that a face the FAN does not find cannot divide by zero)."""
    return (lm_out - lm_src).norm(dim=2).mean(dim=1) / inter_ocular(lm_src).clamp(min=min_iod)


class IntactnessMeter:
    def __init__(self, device, alexnet_weights=None, fan=None):
        self.lpips = load_lpips(device, alexnet_weights)
        self.fan = fan
        self.values = {LPIPS_KEY: [], LANDMARK_KEY: []}

    @torch.inference_mode()
    def update(self, x_src, group_of_images):
        self.values[LPIPS_KEY].append(lpips_to_source(self.lpips, x_src, group_of_images).item())
        if self.fan is not None:
            lm_src = self.fan.get_landmark(x_src).float()
            shifts = [landmark_shift(lm_src, self.fan.get_landmark(x).float()).mean() for x in group_of_images]
            self.values[LANDMARK_KEY].append(torch.stack(shifts).mean().item())

    def pop_task(self, mode, task):
        """The task's means ('{key}_{mode}/{task}'), and a fresh start for the next task."""
        out = {f'{key}_{mode}/{task}': float(np.mean(v)) for key, v in self.values.items() if v}
        self.values = {key: [] for key in self.values}
        return out


def with_means(values, mode):
    """values plus '{key}_{mode}/mean' for each measure (the mean over tasks, as for LPIPS and FID)."""
    out = dict(values)
    for key in (LPIPS_KEY, LANDMARK_KEY):
        per_task = [v for k, v in values.items() if k.startswith(f'{key}_{mode}/')]
        if per_task:
            out[f'{key}_{mode}/mean'] = float(np.mean(per_task))
    return out


def summary(mode, lpips_dict, fid_dict, intact_dict):
    """The printed table: one row per task (and the mean), diversity next to intactness and FID."""
    columns = [('LPIPS diversity', 'LPIPS', lpips_dict), ('LPIPS to source', LPIPS_KEY, intact_dict),
               ('landmark shift', LANDMARK_KEY, intact_dict), ('FID', 'FID', fid_dict)]
    columns = [c for c in columns if any(k.startswith(f'{c[1]}_{mode}/') for k in c[2])]
    tasks = [k.split('/', 1)[1] for k in lpips_dict]
    width = max(len(t) for t in tasks + [mode])
    lines = [f'{mode:<{width}}' + ''.join(f'{title:>18}' for title, _, _ in columns)]
    for task in tasks:
        row = [d.get(f'{key}_{mode}/{task}') for _, key, d in columns]
        lines.append(f'{task:<{width}}' + ''.join(f'{v:>18.4f}' if v is not None else f'{"-":>18}' for v in row))
    return '\n'.join(lines)
