"""Finding the ImageNet weights of the metric networks (Inception-v3 for FID, AlexNet for LPIPS).

    path = resolve_weights(INCEPTION, explicit=args.inception_weights)   # raises WeightsNotFoundError, with what to do
    state_dict = load_state_dict(path)

A file given explicitly is used as it is (never downloaded). Otherwise the file is looked up where torchvision caches
it ($TORCH_HOME/hub/checkpoints, i.e. torch.hub.get_dir()), and downloaded there by torchvision's own mechanism (with
its hash check) when missing; when that fails (offline machine) the error names the expected file and how to get it.
"""
import os
from dataclasses import dataclass

import torch


class WeightsNotFoundError(FileNotFoundError):
    """A metric network's weights are neither given, nor cached, nor downloadable."""


@dataclass(frozen=True)
class WeightsSpec:
    what: str       # for messages
    filename: str   # torchvision's cache file name
    url: str        # the file torchvision downloads
    flag: str       # the command-line flag that gives an explicit path


# torchvision's Inception_V3_Weights.IMAGENET1K_V1 and AlexNet_Weights.IMAGENET1K_V1 (what the reference loads with
# pretrained=True); the URLs are spelled out so that the messages do not depend on the torchvision version.
INCEPTION = WeightsSpec('Inception-v3 (FID)', 'inception_v3_google-0cc3c7bd.pth',
                        'https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth', '--inception_weights')
ALEXNET = WeightsSpec('AlexNet (LPIPS)', 'alexnet-owt-7be5be79.pth',
                      'https://download.pytorch.org/models/alexnet-owt-7be5be79.pth', '--lpips_alexnet_weights')


def cached_path(spec):
    return os.path.join(torch.hub.get_dir(), 'checkpoints', spec.filename)


def resolve_weights(spec, explicit=None, download=True):
    """Absolute path of the weights file: `explicit` if given, else torchvision's cache (downloading it if allowed)."""
    if explicit:
        if not os.path.isfile(explicit):
            raise WeightsNotFoundError(f'{spec.what} weights: {spec.flag} {explicit}: no such file. It should be '
                                       f'torchvision\'s {spec.filename} (download: {spec.url}).')
        return os.path.abspath(explicit)
    path = cached_path(spec)
    if os.path.isfile(path):
        return path
    reason = 'downloads disabled'
    if download:
        try:
            # torchvision's mechanism: into torch.hub.get_dir()/checkpoints, checking the hash in the file name
            torch.hub.load_state_dict_from_url(spec.url, progress=True, check_hash=True, map_location='cpu')
            if os.path.isfile(path):
                return path
            reason = 'the download did not produce the file'
        except Exception as e:  # URLError, timeouts, hash mismatch, disk full...: all end in the same advice
            reason = f'download failed: {type(e).__name__}: {e}'
    raise WeightsNotFoundError(
        f'{spec.what} weights not found: expected {path} (torchvision\'s cache; set TORCH_HOME to move it), '
        f'and {reason}. Download {spec.url} on a machine with internet access and copy it to that path, '
        f'or pass {spec.flag} /path/to/{spec.filename}.')


def load_state_dict(path):
    return torch.load(path, map_location='cpu', weights_only=True)


def load_strict(module, path):
    """Strict loading whose error names the file as well as the missing/unexpected keys."""
    try:
        module.load_state_dict(load_state_dict(path), strict=True)
    except RuntimeError as e:
        raise RuntimeError(f'{path} does not match {type(module).__name__}: {e}') from None
    return module


def file_signature(path):
    """What identifies a weights file for caches: absolute path, size, modification time."""
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]
