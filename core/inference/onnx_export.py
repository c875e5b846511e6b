"""ONNX graphs of the translation, for runtimes without this repository (onnxruntime, TensorRT, OpenVINO, ...):

    paths = export_onnx(translator, 'expr/onnx', '100000_nets_ema')   # --mode export --to onnx (core/inference/export.py)

    {stem}_mapping_network.onnx  z (N, latent_dim) float32, y (N,) int64               -> s (N, style_dim)
    {stem}_style_encoder.onnx    x_ref (N, 3, S, S) float32 in [-1, 1], y (N,) int64   -> s (N, style_dim)
    {stem}_generator.onnx        x (N, 3, S, S) float32 in [-1, 1], s (N, style_dim)   -> image (N, 3, S, S)

N is dynamic. y is the target domain's index (the files' metadata_props hold the names: `domains`, and the settings:
`settings`, JSON). The generator's output is the network's, unclipped: clip to [-1, 1] as translate does. With
w_hpf > 0 (--skip hpf) the generator graph holds the mask source too (the FAN, or the ones of --hpf_masks ones): the
masks are computed from x inside the graph, as masks_of does in PyTorch. Graphs from torch.onnx.export
(torch.export-based; opset 20 with torch 2.14), weights inside each file. docs/deploy.md runs them.
"""
import json
import os
import tempfile
import warnings

import torch
import torch.nn as nn
from munch import Munch

from core.inference.translate import settings_of
from core.model import masks_of

GRAPHS = ('mapping_network', 'style_encoder', 'generator')
EXAMPLE_BATCH = 2  # the example inputs' batch: not 1, which torch.export would take for a constant


class GeneratorWithMasks(nn.Module):
    """G(x, s) with its high-pass masks computed from x, as translate runs it: one graph for the runtime."""

    def __init__(self, nets):
        super().__init__()
        self.generator = nets.generator
        if 'fan' in nets:
            self.fan = nets.fan  # registered, so that its weights are the graph's
        self.nets = Munch({k: v for k, v in nets.items() if k in ('generator', 'fan')})

    def forward(self, x, s):
        return self.generator(x, s, masks=masks_of(self.nets, x))


def graph_modules(nets, args):
    """name -> (module, example inputs, input names, output name) of the three graphs."""
    n, size = EXAMPLE_BATCH, args.img_size
    z = torch.randn(n, args.latent_dim, generator=torch.Generator().manual_seed(0))
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    y = torch.arange(n) % args.num_domains
    s = torch.randn(n, args.style_dim, generator=torch.Generator().manual_seed(2))
    return dict(mapping_network=(nets.mapping_network, (z, y), ['z', 'y'], 's'),
                style_encoder=(nets.style_encoder, (x, y), ['x_ref', 'y'], 's'),
                generator=(GeneratorWithMasks(nets), (x, s), ['x', 's'], 'image'))


def export_graph(module, inputs, input_names, output_name, fname, metadata):
    """One torch.onnx.export, batch dimension dynamic, written atomically (a temp file renamed) with metadata."""
    batch = torch.export.Dim('batch', min=1)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # every input shares the one batch dimension: the exporter says so about each of them
        warnings.filterwarnings('ignore', message='# The axis name: batch will not be used')
        program = torch.onnx.export(module, inputs, input_names=input_names, output_names=[output_name],
                                    dynamic_shapes=tuple({0: batch} for _ in inputs), dynamo=True, verbose=False)
    program.model.metadata_props.update(metadata)
    folder = os.path.dirname(os.path.abspath(fname))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(fname) + '.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        program.save(tmp, external_data=False)  # one self-contained file per graph (well under protobuf's 2 GB)
        os.replace(tmp, fname)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return fname


def export_onnx(translator, out_dir, stem):
    """The three graphs of translator's networks (on the CPU) as {out_dir}/{stem}_{graph}.onnx. Returns the paths."""
    nets = Munch({k: v.cpu().eval() for k, v in translator.nets.items()})
    metadata = dict(domains=json.dumps(translator.domains), settings=json.dumps(settings_of(translator.args)))
    written = []
    for name, (module, inputs, input_names, output_name) in graph_modules(nets, translator.args).items():
        fname = os.path.join(out_dir, f'{stem}_{name}.onnx')
        meta = dict(metadata, graph=name, inputs=', '.join(input_names), output=output_name)
        written.append(export_graph(module, inputs, input_names, output_name, fname, meta))
    return written
