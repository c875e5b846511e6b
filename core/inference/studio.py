"""The style studio: a local web page over the Translator of --mode translate (gradio; docs/studio.md).

    python main.py --mode serve --preset demo       # after the quickstart: prints http://127.0.0.1:7860
    python main.py --mode serve --preset celeba_hq --checkpoint_dir expr/checkpoints/celeba_hq --resume_iter 100000

A photo (uploaded, pasted, or one of the sample inputs of --studio_inputs) is translated into a domain chosen by name,
with styles taken three ways: references clicked in the gallery of --studio_refs/<domain> (one output per reference),
K random latent codes (truncated by psi, from a seed), or a point on the line between two styles (the interpolation
the videos use). Every output is the Translator's own result for the same image, domain, style and seed.

The same operations are endpoints for gradio_client (docs/studio.md):

    from gradio_client import Client, handle_file
    client = Client('http://127.0.0.1:7860/')
    outputs, status = client.predict(handle_file('me.jpg'), 'male', 4, 0.7, 777, False, api_name='/latent')

Safe by default: it listens on 127.0.0.1 only, makes no share link, sends no analytics and loads nothing from outside
(no web fonts: the theme names system fonts only); bound beyond the loopback it asks for a login (the password from
--studio_password_file or $STUDIO_PASSWORD) or refuses to start, unless --open_to_network_without_login. One network
in memory: the requests of every endpoint wait in one queue (--studio_queue long) and are served one at a time, so
visitors at once get the pixels they would get one by one; each answer's images are files of that request alone.
Uploads over --max_upload_mb or --max_upload_pixels, and files that are not images, get a message and the server
keeps serving.
"""
import os
import shutil
import socket
import tempfile
import time
import uuid

import torch
from PIL import Image

from core.data_loader import DataError
from core.inference.translate import TranslateError, Translator, find_images, open_rgb, to_pil

GALLERY_MAX = 64    # references shown per domain (the first, in sorted order)
SAMPLES_MAX = 48    # sample inputs shown
Z_PREFIX, REF_PREFIX = 'z:', 'ref:'  # a style of the mix: 'z:<seed>' (a latent code) or 'ref:<name>' (a reference)


class StudioError(DataError):
    """A request the page cannot serve (no image, an oversized or unreadable upload, an unknown reference): shown on
    the page as one message; the server goes on."""


def image_files(folder, flag):
    """[(name relative to folder, path)] of the images under folder (recursive, sorted); [] when it is missing."""
    if not folder or not os.path.isdir(folder):
        return []
    try:
        return [(rel, path) for path, rel in find_images(folder, flag)]
    except TranslateError:  # a folder without images
        return []


class Studio:
    """What the page does, without the page: the translator, the sample inputs, the reference gallery and the upload
    limits. Each request method returns ([(PIL image, caption)], status line)."""

    def __init__(self, translator, inputs_dir=None, refs_dir=None, max_upload_mb=20, max_upload_pixels=40e6,
                 align_reason=None):
        """align_reason: why face alignment is unavailable (None: it is available)."""
        self.translator = translator
        self.domains = translator.domains
        self.inputs_dir, self.refs_dir = inputs_dir, refs_dir
        self.samples = [p for _, p in image_files(inputs_dir, '--studio_inputs')][:SAMPLES_MAX]
        self.gallery = {d: image_files(os.path.join(refs_dir or '', d), '--studio_refs')[:GALLERY_MAX]
                        for d in self.domains}
        self.max_bytes = int(max_upload_mb * 1e6)
        self.max_pixels = int(max_upload_pixels)
        self.align_reason = align_reason

    @classmethod
    def from_args(cls, args, device):
        translator = Translator.from_checkpoint(args.checkpoint_dir, args.resume_iter, args=args, device=device)
        align_reason = None
        if not os.path.isfile(args.wing_path):
            align_reason = f'needs {args.wing_path} (bash scripts/download.sh wing, or --wing_path)'
        elif not os.path.isfile(args.lm_path):
            align_reason = f'needs {args.lm_path} (bash scripts/download.sh wing, or --lm_path)'
        return cls(translator, args.studio_inputs, args.studio_refs, args.max_upload_mb, args.max_upload_pixels,
                   align_reason)

    # inputs ------------------------------------------------------------------------------------------------------
    def read_upload(self, path, what='the photo'):
        """The RGB PIL image of an uploaded file, checked against the limits before it is decoded."""
        if not path:
            raise StudioError(f'No {what}: upload one, paste one, or click a sample input')
        path = str(path)
        size = os.path.getsize(path)
        if size > self.max_bytes:
            raise StudioError(f'{what.capitalize()} is {size / 1e6:.1f} MB; the limit is {self.max_bytes / 1e6:g} MB '
                              f'(--max_upload_mb)')
        try:
            with Image.open(path) as img:  # reads the header only
                w, h = img.size
        except Image.DecompressionBombError:
            w = h = None
        except Exception as e:
            raise StudioError(f'{what.capitalize()} is not an image PIL can read ({type(e).__name__}); use a JPEG, '
                              f'PNG or WebP file') from None
        if w is None or w * h > self.max_pixels:
            shown = f'{w} x {h} = {w * h:,} pixels' if w else 'too many pixels to open'
            raise StudioError(f'{what.capitalize()} is {shown}; the limit is {self.max_pixels:,} pixels '
                              f'(--max_upload_pixels)')
        try:
            return open_rgb(path)
        except Exception as e:  # a truncated or corrupt file passes the header check and fails here
            raise StudioError(f'{what.capitalize()} could not be decoded ({type(e).__name__}: {e})') from None

    def domain(self, trg):
        try:
            return self.translator.domain_index(trg)
        except TranslateError as e:
            raise StudioError(str(e).replace('--trg_domain', 'Domain')) from None

    def reference_path(self, domain, name):
        for rel, path in self.gallery[domain]:
            if rel == name:
                return path
        names = ', '.join(rel for rel, _ in self.gallery[domain]) or 'none'
        raise StudioError(f'No reference "{name}" in the {domain} gallery ({self.refs_dir}/{domain}); its images: '
                          f'{names}')

    def _align(self, align):
        if align and self.align_reason:
            raise StudioError(f'Face alignment is unavailable: it {self.align_reason}')
        return bool(align)

    def _status(self, outputs, t0):
        return f'{len(outputs)} output(s) in {time.perf_counter() - t0:.2f} s on {self.translator.device}'

    # requests ----------------------------------------------------------------------------------------------------
    def latent(self, image, trg, num_styles=4, psi=1.0, seed=777, align=False):
        """num_styles random styles of domain trg (latent codes from seed, truncated by psi)."""
        t0 = time.perf_counter()
        img = self.read_upload(image)
        y, align = self.domain(trg), self._align(align)
        num_styles, seed = int(num_styles), int(seed)
        if not 1 <= num_styles <= 16:
            raise StudioError(f'Number of styles must be 1-16 (got {num_styles})')
        outs = self.translator(img, y, psi=float(psi), num_styles=num_styles, seed=seed, align=align)
        outputs = [(o, f'z{k} (seed {seed}, psi {float(psi):g})') for k, o in enumerate(outs)]
        return outputs, self._status(outputs, t0)

    def reference(self, image, trg, refs=(), ref_upload=None, align=False):
        """One output per reference: the gallery names in refs (of domain trg) and an uploaded reference."""
        t0 = time.perf_counter()
        img = self.read_upload(image)
        y, align = self.domain(trg), self._align(align)
        name = self.domains[y]
        ref_imgs = [(open_rgb(self.reference_path(name, r)), r) for r in (refs or [])]
        if ref_upload:
            ref_imgs.append((self.read_upload(ref_upload, 'the reference'), 'your reference'))
        if not ref_imgs:
            raise StudioError('No reference chosen: click one or more images of the gallery, or upload a reference')
        outs = self.translator(img, y, ref=[r for r, _ in ref_imgs], align=align)
        outputs = [(o, f'style of {tag}') for o, (_, tag) in zip(outs, ref_imgs)]
        return outputs, self._status(outputs, t0)

    def style(self, spec, y, psi, align):
        """The style of one end of the mix: 'z:<seed>' (truncated by psi) or 'ref:<name>' (a gallery reference)."""
        spec = str(spec or '').strip()
        if spec.startswith(Z_PREFIX) and spec[len(Z_PREFIX):].strip().lstrip('-').isdigit():
            return self.translator.latent_styles(y, 1, float(psi), int(spec[len(Z_PREFIX):]))[0]
        if spec.startswith(REF_PREFIX):
            path = self.reference_path(self.domains[y], spec[len(REF_PREFIX):].strip())
            return self.translator.styles(y, ref=open_rgb(path), align=align)[0]
        raise StudioError(f'Style "{spec}": give {Z_PREFIX}<seed> (a latent code) or {REF_PREFIX}<name> (a reference '
                          f'of the gallery)')

    def mix(self, image, trg, style_a, style_b, alpha=0.5, psi=1.0, align=False):
        """The style lerp(s_a, s_b, alpha) between two styles of domain trg, as the videos interpolate."""
        t0 = time.perf_counter()
        img = self.read_upload(image)
        y, align = self.domain(trg), self._align(align)
        alpha = float(alpha)
        if not 0 <= alpha <= 1:
            raise StudioError(f'Mix must be between 0 and 1 (got {alpha:g})')
        s_a, s_b = self.style(style_a, y, psi, align), self.style(style_b, y, psi, align)
        s_trg = torch.lerp(s_a, s_b, alpha)[None]
        x = self.translator.to_batch([img], align)
        out = to_pil(self.translator.translate(x, s_trg)[0, 0].cpu())
        outputs = [(out, f'{1 - alpha:.2f} {style_a} + {alpha:.2f} {style_b}')]
        return outputs, self._status(outputs, t0)

    def mix_choices(self, trg, n_seeds=8):
        """The styles offered at the ends of the mix for domain trg: seeds 0.. and the gallery's references."""
        name = self.domains[self.domain(trg)]
        return [f'{Z_PREFIX}{k}' for k in range(n_seeds)] + [f'{REF_PREFIX}{r}' for r, _ in self.gallery[name]]


# ------------------------------------------------------------------------------------------------------ the page

class OutputFiles:
    """The outputs of each request as PNG files of that request alone. Handed PIL images, gradio writes each to a
    file named by its content, in place: two requests with the same answer (two visitors, one double click) rewrite
    the file a client is downloading, which then arrives truncated or not at all. A file of our own is copied into
    gradio's cache under a temporary name and renamed there (an existing copy is left as it is)."""

    def __init__(self, keep_s=300):
        self.folder = tempfile.mkdtemp(prefix='stargan_studio_')
        self.keep_s = keep_s

    def write(self, outputs):
        self.prune()
        paths = []
        for img, caption in outputs:
            path = os.path.join(self.folder, uuid.uuid4().hex + '.png')
            img.save(path)
            paths.append((path, caption))
        return paths

    def prune(self):
        """Removes the files of earlier requests (gradio copied them when their request ended)."""
        old = time.time() - self.keep_s
        for f in os.scandir(self.folder):
            try:
                if f.stat().st_mtime < old:
                    os.remove(f.path)
            except OSError:  # removed by another request's prune
                pass

    def close(self):
        shutil.rmtree(self.folder, ignore_errors=True)


LOOPBACK = ('127.0.0.1', 'localhost', '::1')


def on_loopback(host):
    return host in LOOPBACK or host.startswith('127.')


def studio_login(args, environ=os.environ):
    """(user, password) for a --host beyond this machine, None on the loopback (or with
    --open_to_network_without_login); a StudioError naming the flags when there is no password. The password comes
    from --studio_password_file (its first line) or $STUDIO_PASSWORD, never from the command line, which other users
    of the machine can read."""
    if on_loopback(args.host):
        return None
    password = None
    if args.studio_password_file:
        try:
            with open(args.studio_password_file) as f:
                password = f.readline().rstrip('\r\n')
        except OSError as e:
            raise StudioError(f'--studio_password_file {args.studio_password_file}: cannot read it '
                              f'({e.strerror or e})') from None
        if not password:
            raise StudioError(f'--studio_password_file {args.studio_password_file}: its first line is empty')
    elif environ.get('STUDIO_PASSWORD'):
        password = environ['STUDIO_PASSWORD']
    if password:
        return args.studio_user, password
    if args.open_to_network_without_login:
        return None
    raise StudioError(f'--host {args.host} opens the studio to the network: give it a login password with '
                      f'--studio_password_file FILE or $STUDIO_PASSWORD (user --studio_user, "{args.studio_user}"), '
                      f'or pass --open_to_network_without_login to serve anyone who can reach it')


def _gradio():
    """gradio, imported with its analytics off (read when it is imported)."""
    os.environ['GRADIO_ANALYTICS_ENABLED'] = 'False'
    import gradio
    return gradio


def _theme(gr):
    # system fonts only: the default theme fetches its fonts from fonts.googleapis.com
    sans = ['ui-sans-serif', 'system-ui', 'Helvetica', 'Arial', 'sans-serif']
    mono = ['ui-monospace', 'SFMono-Regular', 'Menlo', 'Consolas', 'monospace']
    return gr.themes.Default(font=sans, font_mono=mono)


CSS = """
/* small networks (32-64 px) are shown enlarged: without smoothing, so that their pixels can be judged */
.pixelated img { image-rendering: pixelated; }
/* the photo as large as its box, whatever its size */
#photo img { width: 100%; height: 100%; object-fit: contain; }
"""


def build_page(studio, title='StarGAN v2 studio', queue_size=64):
    """The gradio Blocks of the page over studio; endpoints /latent, /reference, /mix (and the page's own helpers,
    not in the API). page.output_files: where the answers' images are written (closed with the page by serve_cli)."""
    gr = _gradio()
    files = OutputFiles()
    t = studio.translator
    small = t.args.img_size <= 64
    cls = ['pixelated'] if small else []

    def upload(**kwargs):
        """A gr.Image that hands over the uploaded file as it is: the Studio checks its size and pixels before
        decoding it and says what is wrong, where gr.Image would decode it first and fail with a bare error. (Set on
        the instance: a subclass of a gradio component makes gradio write a .pyi file beside this module.)"""
        component = gr.Image(type='filepath', image_mode=None, sources=['upload', 'clipboard'], elem_classes=cls,
                             **kwargs)
        decode = component.preprocess

        def preprocess(payload):
            if payload is not None and payload.path and not (payload.url or '').startswith('data:'):
                return str(payload.path)
            return decode(payload)
        component.preprocess = preprocess
        return component

    def call(method):
        def handler(*inputs):
            try:
                outputs, status = method(*inputs)
            except (StudioError, TranslateError, ValueError) as e:  # ValueError: a face the aligner cannot place
                raise gr.Error(str(e), print_exception=False) from None
            return files.write(outputs), status
        handler.__name__ = method.__name__
        handler.__doc__ = method.__doc__
        return handler

    def gallery_of(domain):  # no captions: names would cover the thumbnails; the chosen names are listed below
        return [p for _, p in studio.gallery.get(domain, [])]

    def on_domain(domain):
        names = [rel for rel, _ in studio.gallery.get(domain, [])]
        choices = studio.mix_choices(domain)
        return (gr.update(value=gallery_of(domain), selected_index=None), gr.update(choices=names, value=[]),
                gr.update(choices=choices, value=choices[0]),
                gr.update(choices=choices, value=choices[1 if len(choices) > 1 else 0]))

    def on_gallery_click(chosen, domain, evt: gr.SelectData):
        items = studio.gallery.get(domain, [])
        chosen = list(chosen or [])
        if isinstance(evt.index, int) and evt.index < len(items):
            name = items[evt.index][0]
            chosen = [c for c in chosen if c != name] if name in chosen else chosen + [name]
        return chosen

    d0 = studio.domains[min(1, len(studio.domains) - 1)]  # the second: the first samples are of the first
    about = (f'**{os.path.basename(t.fname)}**: {t.args.img_size} px, domains {", ".join(studio.domains)}; '
             f'on {t.device}. Inputs are resized to {t.args.img_size} x {t.args.img_size}; uploads up to '
             f'{studio.max_bytes / 1e6:g} MB and {studio.max_pixels / 1e6:g} megapixels.')
    with gr.Blocks(title=title, analytics_enabled=False) as page:
        gr.Markdown(f'# {title}\n{about}')
        with gr.Row():
            with gr.Column(scale=1):
                image = upload(label='Photo', height=280, elem_id='photo')
                domain = gr.Dropdown(choices=studio.domains, value=d0, label='Target domain', elem_id='domain',
                                     allow_custom_value=True)  # the Studio names the domains when one is unknown
                align = gr.Checkbox(label='Align the face first (as CelebA-HQ is)', value=False,
                                    interactive=studio.align_reason is None,
                                    info=('unavailable: ' + studio.align_reason) if studio.align_reason else None)
                if studio.samples:
                    gr.Examples(examples=[[p] for p in studio.samples], inputs=[image], label='Sample inputs',
                                examples_per_page=16)
                else:
                    gr.Markdown(f'No sample inputs ({studio.inputs_dir} has no images; --studio_inputs).')
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab('References', id='tab_reference'):
                        ref_gallery = gr.Gallery(value=gallery_of(d0), label='Click references of the target domain '
                                                 '(one output each; click again to drop)', columns=8, height=240,
                                                 allow_preview=False, elem_id='ref_gallery', elem_classes=cls)
                        # a multiselect that takes any name: the API may name references of any domain's gallery
                        refs = gr.Dropdown(choices=[r for r, _ in studio.gallery.get(d0, [])], value=[],
                                           multiselect=True, allow_custom_value=True, label='Chosen references',
                                           elem_id='refs')
                        ref_upload = upload(label='or a reference of your own', height=140)
                        go_ref = gr.Button('Translate with the references', variant='primary', elem_id='go_reference')
                    with gr.Tab('Random styles', id='tab_latent'):
                        with gr.Row():
                            num_styles = gr.Slider(1, 16, value=4, step=1, label='Styles (K)')
                            psi = gr.Slider(0, 1, value=1.0, step=0.05, label='psi (truncation toward the mean)')
                            seed = gr.Number(value=777, precision=0, label='Seed')
                        go_latent = gr.Button('Translate with random styles', variant='primary', elem_id='go_latent')
                    with gr.Tab('Mix two styles', id='tab_mix'):
                        choices = studio.mix_choices(d0)
                        with gr.Row():
                            style_a = gr.Dropdown(choices=choices, value=choices[0], allow_custom_value=True,
                                                  label=f'Style A ({Z_PREFIX}<seed> or {REF_PREFIX}<reference>)')
                            style_b = gr.Dropdown(choices=choices, value=choices[1], allow_custom_value=True,
                                                  label='Style B')
                        with gr.Row():
                            alpha = gr.Slider(0, 1, value=0.5, step=0.05, label='Mix (0: A, 1: B)')
                            mix_psi = gr.Slider(0, 1, value=1.0, step=0.05, label='psi of latent styles')
                        go_mix = gr.Button('Translate with the mix', variant='primary', elem_id='go_mix')
                outputs = gr.Gallery(label='Translations (PNG; the download button saves one)', columns=4,
                                     height='auto', object_fit='contain', format='png', type='pil',
                                     buttons=['download', 'fullscreen'],
                                     elem_id='outputs', elem_classes=cls)
                status = gr.Markdown(elem_id='status')

        domain.change(on_domain, domain, [ref_gallery, refs, style_a, style_b], api_visibility='private')
        ref_gallery.select(on_gallery_click, [refs, domain], refs, api_visibility='private')
        # one network in memory: every event that uses it in one group, one at a time (gradio's default is one at a
        # time per event, so /latent and /mix would share the network and its caches at once)
        one = dict(concurrency_id='network', concurrency_limit=1)
        go_ref.click(call(studio.reference), [image, domain, refs, ref_upload, align], [outputs, status],
                     api_name='reference', **one)
        go_latent.click(call(studio.latent), [image, domain, num_styles, psi, seed, align], [outputs, status],
                        api_name='latent', **one)
        mix_inputs = [image, domain, style_a, style_b, alpha, mix_psi, align]
        go_mix.click(call(studio.mix), mix_inputs, [outputs, status], api_name='mix', **one)
        alpha.release(call(studio.mix), mix_inputs, [outputs, status], api_visibility='private', **one)
    page.queue(default_concurrency_limit=1, max_size=queue_size)
    page.output_files = files
    return page


def free_port(host):
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def launch(page, host='127.0.0.1', port=7860, max_upload_mb=20, block=True, quiet=False, auth=None):
    """Serves page; returns its address (block False: at once, the server running in a thread). auth: (user,
    password) of a login, or None."""
    _, url, _ = page.launch(server_name=host, server_port=port or free_port(host), share=False, inbrowser=False,
                            auth=auth, auth_message='StarGAN v2 studio' if auth else None,
                            prevent_thread_lock=not block, quiet=quiet, show_error=True,
                            max_file_size=int(max_upload_mb * 1e6) if max_upload_mb else None, ssr_mode=False,
                            mcp_server=False, pwa=False, footer_links=['api'], theme=_theme(_gradio()), css=CSS,
                            enable_monitoring=False)
    return url


def serve_cli(args, device):
    """--mode serve."""
    auth = studio_login(args)  # before the network is read: a refusal costs nothing
    studio = Studio.from_args(args, device)
    page = build_page(studio, queue_size=args.studio_queue)
    print(f'Studio: {studio.translator.fname} ({", ".join(studio.domains)}); {len(studio.samples)} sample inputs '
          f'from {args.studio_inputs}; references from {args.studio_refs}: '
          + ', '.join(f'{d} {len(g)}' for d, g in studio.gallery.items())
          + ('' if studio.align_reason is None else f'; align unavailable: it {studio.align_reason}'))
    if not on_loopback(args.host):
        print(f'--host {args.host}: the page is reachable from other machines, '
              + (f'behind a login (user "{auth[0]}")' if auth else 'without a login (--open_to_network_without_login)'))
    url = launch(page, args.host, args.port, args.max_upload_mb, block=False, quiet=True, auth=auth)
    print(f'Studio page: {url} (Ctrl-C stops it)', flush=True)
    try:
        while page.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:  # the way a page is stopped: not an error
        print('Studio stopped')
    finally:
        page.close()
        page.output_files.close()
    return 0
