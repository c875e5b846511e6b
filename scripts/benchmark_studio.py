"""Time per request of the studio page (--mode serve): a server on one network, requests through gradio_client (what
a page's button costs: upload, queue, translation, PNG encoding, download), beside the Translator call alone.

    python scripts/benchmark_studio.py --checkpoint expr/demo/checkpoints           # the quickstart's network
    python scripts/benchmark_studio.py --released afhq --device cpu                 # released size, random weights
    python scripts/benchmark_studio.py --released celeba_hq                         # + the FAN (random wing.ckpt)
    python scripts/benchmark_studio.py --released demo --concurrency 1,4,12         # N clients at once

Prints one markdown row per request kind (median, min, max over --repeats, after one warm-up request). With
--concurrency: for each N, N clients (threads, one gradio_client each) send --repeats /latent requests each (2 styles
of one photo, one seed) at once; one row of requests per second, and every answer compared, pixel for pixel, with
the answer of a request sent alone (a difference or a failed request stops the script with exit code 1).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def released_checkpoint(preset, folder):
    """A *_nets_ema.ckpt of the released networks' size (random weights) and, for w_hpf 1, a random wing.ckpt."""
    import torch
    from core.checkpoint import CheckpointIO
    from core.config import parse_args
    from core.model import build_model
    from core.wing import FAN
    torch.manual_seed(0)
    wing = os.path.join(folder, 'wing.ckpt')
    torch.save({'state_dict': FAN().state_dict()}, wing)
    args = parse_args(['--mode', 'train', '--preset', preset, '--wing_path', wing])
    _, ema = build_model(args)
    CheckpointIO(os.path.join(folder, '{:06d}_nets_ema.ckpt'),
                 **{k: ema[k] for k in ('generator', 'mapping_network', 'style_encoder')}).save(1)
    return folder, wing


def picture(path, size):
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC).save(path)
    return path


def timed(fn, repeats):
    fn()  # warm-up: first-call allocations, the queue's first connection
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def latent_pixels(client, photo, domain, seed=777):
    """The /latent answer (2 styles, psi 0.7) as arrays."""
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image
    outputs, _ = client.predict(handle_file(photo), domain, 2, 0.7, seed, False, api_name='/latent')
    return [np.asarray(Image.open(o['image']).convert('RGB')) for o in outputs]


def concurrent_requests(url, photo, domain, clients, per_client):
    """clients threads, one gradio_client each, per_client /latent requests each, all started together;
    (seconds, [answer or the exception's text])."""
    import threading
    from gradio_client import Client
    conns = [Client(url, verbose=False) for _ in range(clients)]
    answers, start = [], threading.Barrier(clients)
    lock = threading.Lock()

    def work(c):
        start.wait()
        for _ in range(per_client):
            try:
                got = latent_pixels(c, photo, domain)
            except Exception as e:  # the failure is the result: counted, named
                got = f'{type(e).__name__}: {e}'
            with lock:
                answers.append(got)
    threads = [threading.Thread(target=work, args=(c,)) for c in conns]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0, answers


def concurrency_rows(url, photo, domain, levels, per_client, name):
    import numpy as np
    from gradio_client import Client
    alone = latent_pixels(Client(url, verbose=False), photo, domain)
    print(f'{name}: /latent, 2 styles, psi 0.7, one seed; {per_client} request(s) per client')
    print('| network | clients | requests | requests/s | failed | other pixels |')
    print('| --- | --- | --- | --- | --- | --- |')
    ok = True
    for n in levels:
        seconds, answers = concurrent_requests(url, photo, domain, n, per_client)
        failed = [a for a in answers if isinstance(a, str)]
        differ = [a for a in answers if not isinstance(a, str) and
                  not (len(a) == len(alone) and all(np.array_equal(x, y) for x, y in zip(a, alone)))]
        ok &= not failed and not differ
        print(f'| {name} | {n} | {len(answers)} | {len(answers) / seconds:.2f} | {len(failed)} | {len(differ)} |',
              flush=True)
        for f in failed[:3]:
            print(f'  failed: {f[:300]}')
    return ok


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--checkpoint', default=None, help='a run folder or *_nets_ema.ckpt')
    p.add_argument('--preset', default=None, help='with --checkpoint: its preset (domain names)')
    p.add_argument('--released', choices=['demo', 'afhq', 'celeba_hq'], default=None,
                   help='a network of the released size with random weights instead of --checkpoint')
    p.add_argument('--device', default='cpu')
    p.add_argument('--num_threads', type=int, default=0, help='torch threads (0: the default)')
    p.add_argument('--repeats', type=int, default=5)
    p.add_argument('--concurrency', default=None, help='e.g. 1,4,12: requests per second at each number of clients')
    a = p.parse_args()

    import torch
    from gradio_client import Client, handle_file
    from core.config import parse_args
    from core.inference.studio import Studio, build_page, launch
    from core.inference.translate import open_rgb, to_pil

    if a.num_threads:
        torch.set_num_threads(a.num_threads)
    tmp = tempfile.mkdtemp(prefix='studio_bench_')
    flags = ['--mode', 'serve', '--device', a.device]
    if a.released:
        ckpt, wing = released_checkpoint(a.released, tmp)
        flags += ['--preset', a.released, '--checkpoint_dir', ckpt, '--wing_path', wing]
    else:
        flags += (['--preset', a.preset] if a.preset else []) + ['--checkpoint_dir', a.checkpoint]
    args = parse_args(flags)
    ref_dir = os.path.join(tmp, 'refs')
    studio = Studio.from_args(args, torch.device(a.device))
    t = studio.translator
    size = t.args.img_size
    domain = t.domains[-1]
    os.makedirs(os.path.join(ref_dir, domain))
    ref = picture(os.path.join(ref_dir, domain, 'ref.png'), size)
    studio = Studio(t, None, ref_dir, args.max_upload_mb, args.max_upload_pixels, studio.align_reason)
    photo = picture(os.path.join(tmp, 'photo.png'), size)
    url = launch(build_page(studio), port=0, block=False, quiet=True)
    client = Client(url, verbose=False)

    img, y = open_rgb(photo), t.domain_index(domain)
    if a.concurrency:
        ok = concurrency_rows(url, photo, domain, [int(n) for n in a.concurrency.split(',')], a.repeats,
                              f'{a.released or a.checkpoint} ({size} px)')
        sys.exit(0 if ok else 1)
    rows = [
        ('latent, 1 style', lambda: client.predict(handle_file(photo), domain, 1, 1.0, 0, False, api_name='/latent'),
         lambda: t(img, domain, num_styles=1)),
        ('latent, 4 styles', lambda: client.predict(handle_file(photo), domain, 4, 0.7, 0, False, api_name='/latent'),
         lambda: t(img, domain, num_styles=4, psi=0.7)),
        ('reference, 1', lambda: client.predict(handle_file(photo), domain, ['ref.png'], None, False,
                                                api_name='/reference'),
         lambda: t(img, domain, ref=open_rgb(ref))),
        ('mix of a code and a reference', lambda: client.predict(handle_file(photo), domain, 'z:0', 'ref:ref.png', 0.5,
                                                                 1.0, False, api_name='/mix'),
         lambda: to_pil(t.translate(t.to_batch([img]), torch.lerp(
             t.latent_styles(y, 1)[0], t.reference_styles(t.to_batch([open_rgb(ref)]), y)[0], 0.5)[None])[0, 0])),
    ]
    name = a.released or a.checkpoint
    print(f'{name}: {size} px, {t.args.num_domains} domains, w_hpf {t.args.w_hpf:g}, device {a.device}, '
          f'{torch.get_num_threads()} threads, {a.repeats} repeats')
    print('| network | request | page (gradio_client), s: median (min-max) | Translator alone, s |')
    print('| --- | --- | --- | --- |')
    for label, page_call, api_call in rows:
        pm, pl, ph = timed(page_call, a.repeats)
        am, _, _ = timed(api_call, a.repeats)
        print(f'| {name} | {label} | {pm:.3f} ({pl:.3f}-{ph:.3f}) | {am:.3f} |', flush=True)


if __name__ == '__main__':
    main()
