"""--mode export: a network file as files to ship. safetensors holds the tensors only (nothing to unpickle, nothing
that can run code); ONNX graphs (core/inference/onnx_export.py) run in a runtime without this repository (docs/deploy.md).

    python main.py --mode export --to safetensors --checkpoint_dir expr/checkpoints/celeba_hq --resume_iter 100000
        # -> expr/checkpoints/celeba_hq/100000_nets_ema.safetensors, read by translate, sample, eval, --init_from and
        #    Translator.from_checkpoint wherever they read the .ckpt
    python main.py --mode export --to onnx --checkpoint_dir expr/checkpoints/celeba_hq --export_dir expr/onnx
        # -> expr/onnx/100000_nets_ema_{mapping_network,style_encoder,generator}.onnx

    export_safetensors(translator, 'out/100000_nets_ema.safetensors', source=fname)

The networks are G, F, E of a *_nets_ema.ckpt (or *_nets.ckpt): their settings are read from the file as --mode
translate reads them, the domain names found as translate finds them (--domains, args.json beside the file,
--preset). The file is loaded into the networks first, so what is exported is what translate would run: a released
generator without `hpf.filter` gets it (rebuilt from w_hpf), every other tensor is the file's, bit for bit.
"""
import json
import os
import re

from munch import Munch

from core.checkpoint import atomic_write
from core.data_loader import DataError
from core.files.ckpt_settings import read_nets_file
from core.inference.translate import Translator, domain_names, resolve_checkpoint, settings_of, with_file_settings
from core.machinery.safe_load import SAFETENSORS_FORMAT

EXPORTED = ('generator', 'mapping_network', 'style_encoder')


def export_safetensors(translator, fname, source=''):
    """Writes G, F, E of translator as one .safetensors file (keys `<network>.<state_dict key>`; metadata: format,
    settings, domains, source and the non-tensor state entries, as JSON strings), atomically. Returns fname."""
    from safetensors.torch import save
    tensors, extra = {}, {}
    for net in EXPORTED:
        for key, value in translator.nets[net].state_dict().items():
            if key == '_extra_state':  # the --skip variant's record: {'skip': 'unet'}
                extra[net] = value
            else:
                tensors[f'{net}.{key}'] = value.detach().cpu().contiguous()
    metadata = dict(format=SAFETENSORS_FORMAT, settings=json.dumps(settings_of(translator.args)),
                    domains=json.dumps(translator.domains), source=os.path.basename(str(source)))
    if extra:
        metadata['extra_state'] = json.dumps(extra)
    data = save(tensors, metadata=metadata)
    atomic_write(fname, lambda f: f.write(data))
    return fname


def export_cli(args, device=None):
    """--mode export. Returns the written paths. Runs on the CPU (the files do not depend on the device)."""
    fname = resolve_checkpoint(args.checkpoint_dir, args.resume_iter)
    state = read_nets_file(fname, flag='--checkpoint_dir', trust_pickle=args.trust_pickle)
    file_args = with_file_settings(args, state)
    if args.to == 'safetensors':
        # the FAN (the mask source of w_hpf > 0) is not part of the file: no --wing_path needed to write it
        file_args = Munch(file_args, hpf_masks='ones')
    names, source = domain_names(file_args, fname)
    out_dir = args.export_dir or os.path.dirname(os.path.abspath(fname))
    stem = re.sub(r'\.(ckpt|safetensors)$', '', os.path.basename(fname))
    out = os.path.join(out_dir, stem + '.safetensors')
    if args.to == 'safetensors' and os.path.abspath(out) == os.path.abspath(fname):
        raise DataError(f'--to safetensors: {fname} is already a safetensors file (give --export_dir to copy it)')
    translator = Translator(state, file_args, names, 'cpu', fname)
    print(f'Exporting {fname} (img_size {file_args.img_size}, {file_args.num_domains} domains: {", ".join(names)} '
          f'from {source}; w_hpf {file_args.w_hpf:g}, --skip {file_args.skip}) as {args.to} to {out_dir}')
    if args.to == 'safetensors':
        written = [export_safetensors(translator, out, fname)]
    else:
        from core.inference.onnx_export import export_onnx
        written = export_onnx(translator, out_dir, stem)
    print('Wrote ' + ', '.join(written))
    return written
