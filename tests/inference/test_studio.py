"""The style studio (--mode serve, core/inference/studio.py): a server started by main.py on a tiny randomly initialised
network, called through gradio_client and driven in a headless Chromium (scripts/studio_browser.py); every output is
compared, pixel for pixel, with the Translator API's result for the same image, domain, style and seed."""
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from core.inference.translate import Translator, open_rgb, to_pil
from test_translate import save_network

gradio_client = pytest.importorskip('gradio_client')
from gradio_client import handle_file  # noqa: E402

pytestmark = pytest.mark.usefixtures('one_thread')

DOMAINS = ('female', 'male')
MAX_PIXELS = 200_000
START_TIMEOUT_S = 120


def picture(path, seed, size=(48, 40)):
    """A smooth random colour picture (not square: the page squashes it as --mode translate does)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.BICUBIC).save(path)
    return str(path)


def as_from_a_terminal():
    """In the server's process before it starts: Ctrl-C reaches it as it reaches one started from a terminal. A job
    started in the background (`... &`, as CI may be) hands its children SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler; a blocked SIGINT is inherited too."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def signal_state(pid):
    """The SigBlk/SigIgn/SigCgt lines of /proc/PID/status (Linux), for a server that does not stop."""
    try:
        with open(f'/proc/{pid}/status') as f:
            return ''.join(line for line in f if line.startswith(('SigBlk', 'SigIgn', 'SigCgt')))
    except OSError:
        return ''


def start_server(root, ckpt_dir, net_log, *flags, env=None):
    """main.py --mode serve on ckpt_dir, the folders of root, under tests/net_guard.py; (process, the page's
    address, its output so far), once it prints the address."""
    cmd = [sys.executable, 'tests/net_guard.py', str(net_log), 'main.py', '--mode', 'serve', '--device', 'cpu',
           '--num_threads', '1', '--checkpoint_dir', str(ckpt_dir), '--studio_inputs', str(root / 'inputs'),
           '--studio_refs', str(root / 'refs'), '--port', '0', '--max_upload_pixels', str(MAX_PIXELS),
           '--wing_path', str(root / 'no_wing.ckpt'), *flags]
    env = dict(os.environ, PYTHONUNBUFFERED='1', NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost',
               **(env or {}))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=as_from_a_terminal)
    lines, url, t0 = [], None, time.time()
    while url is None and time.time() - t0 < START_TIMEOUT_S:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        lines.append(line)
        m = re.search(r'Studio page: (http://\S+)', line)
        url = m.group(1) if m else None
    if url is None:
        proc.kill()
        pytest.fail('the server did not start:\n' + ''.join(lines))
    return proc, url, lines


def stop_server(proc, lines):
    proc.send_signal(signal.SIGINT)  # Ctrl-C: how a page is stopped, not an error
    try:
        assert proc.wait(timeout=30) == 0, ''.join(lines) + proc.stdout.read()
    except subprocess.TimeoutExpired:
        state = signal_state(proc.pid)
        proc.kill()
        pytest.fail(f'the server did not stop within 30 s of Ctrl-C; its signals:\n{state}its output:\n'
                    + ''.join(lines) + proc.stdout.read())


@pytest.fixture(scope='module')
def studio(tmp_path_factory):
    """A server of `main.py --mode serve` (its stdout read until it prints the page's address), the folders it
    shows and the Translator of the same file."""
    root = tmp_path_factory.mktemp('studio')
    ckpt_dir = root / 'run'
    ckpt_dir.mkdir()
    fname, _ = save_network(ckpt_dir, domains=','.join(DOMAINS))
    for d in DOMAINS:
        (root / 'inputs' / d).mkdir(parents=True)
        (root / 'refs' / d).mkdir(parents=True)
        for k in range(2):
            picture(root / 'inputs' / d / f'{k}.png', seed=10 * DOMAINS.index(d) + k)
        for k in range(3):
            picture(root / 'refs' / d / f'{d}_{k}.jpg', seed=100 + 10 * DOMAINS.index(d) + k)
    net_log = root / 'outside.log'
    net_log.write_text('')
    proc, url, lines = start_server(root, ckpt_dir, net_log)
    client = gradio_client.Client(url, verbose=False)
    translator = Translator.from_checkpoint(fname, device='cpu')
    yield dict(url=url, client=client, translator=translator, root=root, proc=proc, log=lines, net_log=net_log,
               ckpt_dir=ckpt_dir)
    stop_server(proc, lines)


def pixels(img):
    return np.asarray(img.convert('RGB') if isinstance(img, Image.Image) else Image.open(img).convert('RGB'))


def assert_same(outputs, expected):
    """The page's outputs (gradio_client's [{'image': path, 'caption': ...}]) equal the API's PIL images exactly."""
    assert len(outputs) == len(expected)
    for out, exp in zip(outputs, expected):
        assert out['image'].endswith('.png')  # lossless, as the page offers them for download
        np.testing.assert_array_equal(pixels(out['image']), pixels(exp))


def photo(studio):
    return str(studio['root'] / 'inputs' / 'female' / '0.png')


def latent(studio, image, domain='male', k=3, psi=0.7, seed=5, align=False):
    return studio['client'].predict(handle_file(image), domain, k, psi, seed, align, api_name='/latent')


# ------------------------------------------------------------------------------------------------------- endpoints

def test_latent_styles_equal_the_api(studio):
    outputs, status = latent(studio, photo(studio), 'male', k=3, psi=0.7, seed=5)
    expected = studio['translator'](open_rgb(photo(studio)), 'male', psi=0.7, num_styles=3, seed=5)
    assert_same(outputs, expected)
    assert [o['caption'] for o in outputs] == [f'z{k} (seed 5, psi 0.7)' for k in range(3)]
    assert re.fullmatch(r'3 output\(s\) in \d+\.\d\d s on cpu', status)
    # another seed gives other styles: the seed reaches the network
    other, _ = latent(studio, photo(studio), 'male', k=1, psi=0.7, seed=6)
    assert (pixels(other[0]['image']) != pixels(outputs[0]['image'])).any()
    # the same request again: the server's mean style of (male, seed 5) now comes from its cache, the same pixels
    again, _ = latent(studio, photo(studio), 'male', k=3, psi=0.7, seed=5)
    assert_same(again, expected)


def test_reference_styles_equal_the_api(studio):
    refs = studio['root'] / 'refs' / 'male'
    own = picture(studio['root'] / 'own_ref.png', seed=999, size=(64, 64))
    outputs, status = studio['client'].predict(handle_file(photo(studio)), 'male', ['male_2.jpg', 'male_0.jpg'],
                                               handle_file(own), False, api_name='/reference')
    expected = studio['translator'](open_rgb(photo(studio)), 'male',
                                    ref=[open_rgb(refs / 'male_2.jpg'), open_rgb(refs / 'male_0.jpg'), open_rgb(own)])
    assert_same(outputs, expected)
    assert [o['caption'] for o in outputs] == ['style of male_2.jpg', 'style of male_0.jpg',
                                               'style of your reference']
    assert status.startswith('3 output(s)')


def test_mix_is_the_lerp_of_the_two_styles(studio):
    t = studio['translator']
    client = studio['client']
    ref = studio['root'] / 'refs' / 'female' / 'female_1.jpg'
    outputs, _ = client.predict(handle_file(photo(studio)), 'female', 'z:3', 'ref:female_1.jpg', 0.25, 0.8, False,
                                api_name='/mix')
    y = t.domain_index('female')
    s_a = t.latent_styles(y, 1, 0.8, 3)[0]
    s_b = t.reference_styles(t.to_batch([open_rgb(ref)]), y)[0]
    x = t.to_batch([open_rgb(photo(studio))])
    expected = to_pil(t.translate(x, torch.lerp(s_a, s_b, 0.25)[None])[0, 0])
    assert_same(outputs, [expected])
    # the ends of the slider are the two styles themselves
    at_a, _ = client.predict(handle_file(photo(studio)), 'female', 'z:3', 'ref:female_1.jpg', 0, 0.8, False,
                             api_name='/mix')
    assert_same(at_a, t(open_rgb(photo(studio)), 'female', psi=0.8, num_styles=1, seed=3))
    at_b, _ = client.predict(handle_file(photo(studio)), 'female', 'z:3', 'ref:female_1.jpg', 1, 0.8, False,
                             api_name='/mix')
    assert_same(at_b, t(open_rgb(photo(studio)), 'female', ref=open_rgb(ref)))


def test_domains_by_name_case_or_index_and_an_unknown_one(studio):
    by_name, _ = latent(studio, photo(studio), 'male', k=1)
    for other in ('MALE', '1'):
        same, _ = latent(studio, photo(studio), other, k=1)
        np.testing.assert_array_equal(pixels(same[0]['image']), pixels(by_name[0]['image']))
    with pytest.raises(gradio_client.exceptions.AppError, match='"cat" is not a domain of this network; its '
                                                               'domains: female, male'):
        latent(studio, photo(studio), 'cat')


def test_bad_uploads_get_a_message_and_the_server_goes_on(studio, tmp_path):
    AppError = gradio_client.exceptions.AppError
    text = tmp_path / 'notes.png'
    text.write_text('not an image')
    with pytest.raises(AppError, match='not an image PIL can read'):
        latent(studio, str(text))
    truncated = tmp_path / 'cut.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(AppError, match='could not be decoded'):
        latent(studio, str(truncated))
    huge = tmp_path / 'huge.png'
    Image.new('RGB', (500, 500), 'gray').save(huge)  # 250,000 pixels, over the server's 200,000
    with pytest.raises(AppError, match=r'500 x 500 = 250,000 pixels; the limit is 200,000 pixels \(--max_upload_pixels\)'):
        latent(studio, str(huge))
    with pytest.raises(AppError, match='No reference "nobody.jpg" in the male gallery'):
        studio['client'].predict(handle_file(photo(studio)), 'male', ['nobody.jpg'], None, False,
                                 api_name='/reference')
    with pytest.raises(AppError, match='Face alignment is unavailable: it needs .*no_wing.ckpt'):
        latent(studio, photo(studio), align=True)
    outputs, _ = latent(studio, photo(studio), k=1)  # still serving
    assert len(outputs) == 1 and studio['proc'].poll() is None


def test_listens_on_this_machine_only(studio):
    assert studio['url'].startswith('http://127.0.0.1:')
    port = int(studio['url'].rstrip('/').rsplit(':', 1)[1])
    others = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:  # the address of the default route (sends nothing)
        try:
            probe.connect(('192.0.2.254', 9))
            others.add(probe.getsockname()[0])
        except OSError:
            pass
    others |= {ip for *_, (ip, *_) in socket.getaddrinfo(socket.gethostname(), port, socket.AF_INET)}
    others = {ip for ip in others if not ip.startswith('127.') and ip != '0.0.0.0'}
    if not others:
        pytest.skip('this machine has no address but the loopback one')
    for ip in others:
        with socket.socket() as sock, pytest.raises(OSError):
            sock.settimeout(2)
            sock.connect((ip, port))


# ------------------------------------------------------------------------------------------------------- the page

def test_the_page_in_a_browser_translates_and_fetches_nothing_from_outside(studio, tmp_path):
    pytest.importorskip('playwright')
    sys.path.insert(0, str(REPO / 'scripts'))
    import studio_browser
    if studio_browser.find_chromium() is None:
        pytest.skip('no Chromium (apt-get install chromium, or python -m playwright install chromium)')
    upload = picture(tmp_path / 'me.png', seed=7, size=(80, 60))
    shot = tmp_path / 'page.png'
    r = studio_browser.drive(studio['url'], upload, 'male', n_refs=2, screenshot=str(shot), timeout_s=60)
    assert r['references'] == ['male_0.jpg', 'male_1.jpg']
    refs = studio['root'] / 'refs' / 'male'
    expected = studio['translator'](open_rgb(upload), 'male', ref=[open_rgb(refs / n) for n in r['references']])
    assert len(r['outputs']) == 2
    for png, exp in zip(r['outputs'], expected):
        np.testing.assert_array_equal(pixels(io.BytesIO(png)), pixels(exp))
    assert r['captions'] == ['style of male_0.jpg', 'style of male_1.jpg']
    assert r['status'].startswith('2 output(s) in')
    base = studio['url'].rstrip('/')
    outside = [u for u in r['requests'] if not studio_browser.is_local(u, base)]
    assert not outside, f'the page requested {outside}'
    assert len(r['requests']) > 10  # the page, its scripts, styles, the upload, the queue, the outputs
    with Image.open(shot) as img:
        assert img.size[0] == 1280 and img.size[1] > 600


def test_the_server_contacted_nothing_outside(studio):
    # every connection and name lookup of the server process so far (start, every request above, the page's assets)
    assert studio['net_log'].read_text() == ''


# ------------------------------------------------------------------------------------------------------- many at once

def at_once(url, n, call, auth=None):
    """n clients (threads, one gradio_client each) calling call(client) together; [result or exception]."""
    import threading
    clients = [gradio_client.Client(url, verbose=False, auth=auth) for _ in range(n)]
    results, start = [None] * n, threading.Barrier(n)

    def work(k):
        start.wait()
        try:
            results[k] = call(clients[k])
        except Exception as e:  # a failed request is the outcome under test
            results[k] = e
    threads = [threading.Thread(target=work, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def test_twelve_visitors_at_once_get_the_pixels_of_one(studio):
    """12 clients at once asking /latent for 2 styles of one photo with one seed (and a 13th asking /mix, which
    shares the network): none fails, each gets exactly the Translator's answer."""
    image = photo(studio)
    expected = studio['translator'](open_rgb(image), 'male', psi=0.7, num_styles=2, seed=11)

    def call(client):
        return client.predict(handle_file(image), 'male', 2, 0.7, 11, False, api_name='/latent')[0]
    results = at_once(studio['url'], 12, call)
    failed = [r for r in results if isinstance(r, Exception)]
    assert not failed, failed
    for outputs in results:
        assert_same(outputs, expected)
    assert len({o['image'] for r in results for o in r}) == 24  # each answer's files its own


def test_studio_login_is_required_beyond_the_loopback():
    from core.config import parse_args
    from core.inference.studio import StudioError, studio_login

    def args(*flags):
        return parse_args(['--mode', 'serve', *flags])
    assert studio_login(args()) is None  # 127.0.0.1
    with pytest.raises(StudioError, match=r'^--host 0.0.0.0 opens the studio to the network: give it a login password '
                                          r'with --studio_password_file FILE or \$STUDIO_PASSWORD .*'
                                          r'--open_to_network_without_login'):
        studio_login(args('--host', '0.0.0.0'), environ={})
    assert studio_login(args('--host', '0.0.0.0', '--open_to_network_without_login'), environ={}) is None
    assert studio_login(args('--host', '0.0.0.0'), environ={'STUDIO_PASSWORD': 's3cret'}) == ('studio', 's3cret')


def test_a_server_off_the_loopback_asks_for_a_login_and_its_queue_says_when_full(studio, tmp_path):
    """--host 0.0.0.0 with the password in a file: a client without the login is refused, one with it is served;
    --studio_queue 1 answers the requests beyond it "Queue is full", and the others get the one-by-one pixels; the
    password is nowhere in the server's output."""
    root = studio['root']
    password = 'pass-' + os.urandom(6).hex()
    (tmp_path / 'pw').write_text(password + '\n')
    net_log = tmp_path / 'outside.log'
    net_log.write_text('')
    proc, url, lines = start_server(root, studio['ckpt_dir'], net_log, '--host', '0.0.0.0', '--studio_password_file',
                                    str(tmp_path / 'pw'), '--studio_queue', '1')
    try:
        url = re.sub(r'//[^:/]+:', '//127.0.0.1:', url)
        import httpx
        with httpx.Client() as http:
            assert http.get(url + 'config').status_code == 401
            assert http.post(url + 'login', data=dict(username='studio', password='wrong')).status_code == 400
        with pytest.raises(Exception, match='(?i)login|auth|401'):
            gradio_client.Client(url, verbose=False)
        image = photo(studio)
        expected = studio['translator'](open_rgb(image), 'female', psi=1.0, num_styles=2, seed=3)
        results = at_once(url, 12, lambda c: c.predict(handle_file(image), 'female', 2, 1.0, 3, False,
                                                       api_name='/latent')[0], auth=('studio', password))
        full = [r for r in results if isinstance(r, Exception)]
        served = [r for r in results if not isinstance(r, Exception)]
        assert full and served, results
        assert all('Queue is full' in str(e) for e in full), full
        for outputs in served:
            assert_same(outputs, expected)
    finally:
        stop_server(proc, lines)
    assert password not in ''.join(lines)
