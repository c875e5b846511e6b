"""--micro_batch: each process's batch in chunks, for the training step (core/solver.py).

    size = resolve_micro_batch(args, device, local_batch)     # images per chunk; local_batch when not chunked
    for share, chunk in split_batch(inputs, masks, size):     # share: the chunk's fraction of the batch
        loss, terms = compute_d_loss(nets, weights, chunk.x_src, ...)
        (share * loss).backward()                             # gradients accumulate over the chunks

Why this is the whole batch's update: StarGAN v2 has no batch statistics (instance norm is per image, the FAN's
batch norms run on their stored statistics) and every loss term, the R1 penalty included, is a mean over images of
the same number of elements each, so the share-weighted sum of the chunks' losses (and of their gradients) is the
whole batch's, up to float rounding. The chunks keep the batch's order, its latent codes and reference partners.
"""
import math

from munch import Munch

from core.machinery.compile import cudagraphs_enabled

BATCH_FIELDS = ('x_src', 'y_src', 'x_ref', 'x_ref2', 'y_ref', 'z_trg', 'z_trg2')

# CUDA graphs (torch.compile's reduce-overhead, and max-autotune, which turns them on too) replay into memory they
# own: the chunks of one step would overwrite each other's outputs and gradients between two step marks
CUDAGRAPH_MODES = ('reduce-overhead', 'max-autotune')


def _slice(x, part):
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return type(x)(_slice(t, part) for t in x)
    return x[part]


def split_batch(inputs, masks, size):
    """[(share, Munch(inputs fields and masks) of the chunk)] over chunks of `size` images (the last may be smaller),
    in the batch's order; one chunk, the inputs themselves and share 1, when size covers the batch."""
    batch = inputs.x_src.size(0)
    if size <= 0 or size >= batch:
        return [(1.0, Munch({k: inputs[k] for k in BATCH_FIELDS}, masks=masks))]
    chunks = []
    for start in range(0, batch, size):
        part = slice(start, min(start + size, batch))
        chunk = Munch({k: inputs[k][part] for k in BATCH_FIELDS}, masks=_slice(masks, part))
        chunks.append(((part.stop - part.start) / batch, chunk))
    return chunks


def weighted_terms(parts):
    """The whole batch's loss terms from the chunks' [(share, Munch of 0-d tensors)]: sum of share * term (every term
    is a mean over images). One chunk: its terms unchanged (bit-identical to no chunking)."""
    if len(parts) == 1:
        return parts[0][1]
    return Munch({k: sum(share * terms[k] for share, terms in parts) for k in parts[0][1]})


def candidate_sizes(local_batch):
    """Chunk sizes worth trying, largest first: ceil(B / k) for k chunks. A size between two of them costs the
    chunks of the smaller one with the memory of a larger one (8 in chunks of 3: 3 + 3 + 2)."""
    return sorted({math.ceil(local_batch / k) for k in range(1, local_batch + 1)}, reverse=True)


def choose_micro_batch(local_batch, free_bytes, needed_bytes, margin):
    """The largest candidate size n whose needed_bytes(n) (the counted peak, a function) fits free_bytes / margin;
    (n, needed_bytes(n)). None when not even one image fits."""
    for n in candidate_sizes(local_batch):
        need = needed_bytes(n)
        if need * margin <= free_bytes:
            return n, need
    return None


def check_micro_batch(args, size, local_batch):
    """Flag combinations that cannot run chunked: an error naming the flags."""
    if size < local_batch and args.compile and (cudagraphs_enabled(args) or args.compile_mode in CUDAGRAPH_MODES):
        raise SystemExit(f'--micro_batch {args.micro_batch} with --compile_mode {args.compile_mode}: CUDA graphs '
                         f'replay into their own memory, so the chunks of a step would overwrite each other\'s '
                         f'outputs. Use --compile_mode default or max-autotune-no-cudagraphs, or no --micro_batch.')


def resolve_micro_batch(args, device, local_batch, free_bytes=None, log=print, solver_cls=None):
    """Images per chunk for this process: local_batch when not chunked (--micro_batch 0, or N >= the batch, or auto on
    a CPU); N; or, for auto on CUDA, the largest candidate size whose counted memory (core/machinery/memory.py) fits the
    device's free memory (torch.cuda.mem_get_info, or free_bytes) with core.machinery.memory.MARGIN. The choice is printed."""
    value = args.micro_batch
    if value == 'auto':
        if device.type != 'cuda':
            log(f'--micro_batch auto: the whole batch ({local_batch} images) on {device.type}')
            return local_batch
        size = _auto_size(args, device, local_batch, free_bytes, log, solver_cls)
    else:
        size = local_batch if value in (0, None) else min(int(value), local_batch)
        if size < local_batch:
            log(f'--micro_batch {value}: each step in {math.ceil(local_batch / size)} chunks of at most {size} '
                f'images (batch {local_batch} per process), one optimiser step per network')
    check_micro_batch(args, size, local_batch)
    return size


def _auto_size(args, device, local_batch, free_bytes, log, solver_cls):
    import time

    import torch

    from core.machinery.memory import MARGIN, count_training_memory
    if free_bytes is None:
        # what this process may still use: the device's free memory and what its allocator already holds (the
        # Solver's weights, which the count includes)
        free_bytes = torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    t0, counted = time.perf_counter(), {}

    def needed(n):
        counted[n] = count_training_memory(args, n, local_batch, device, solver_cls=solver_cls)
        return counted[n].total
    choice = choose_micro_batch(local_batch, free_bytes, needed, MARGIN)
    gib = 2 ** 30
    if choice is None:
        raise SystemExit(f'--micro_batch auto: one image per chunk needs {counted[1].total * MARGIN / gib:.1f} GiB '
                         f'(counted {counted[1].total / gib:.1f} GiB x margin {MARGIN}), more than the '
                         f'{free_bytes / gib:.1f} GiB free on {device}: try --amp bf16 or a smaller --img_size '
                         f'(docs/memory.md)')
    size, need = choice
    log(f'--micro_batch auto: {size} images per chunk ({math.ceil(local_batch / size)} chunk(s) of the batch of '
        f'{local_batch}) on {device}: counted {need / gib:.2f} GiB x margin {MARGIN} = {need * MARGIN / gib:.2f} GiB '
        f'of {free_bytes / gib:.2f} GiB free (counted on {counted[size].device} in {time.perf_counter() - t0:.0f} s, '
        f'docs/memory.md)')
    return size
