"""Drives the studio page (--mode serve) in a headless Chromium, as a person would: upload a photo, pick the target
domain, click references in the gallery, press translate, read the outputs. Used by tests/inference/test_studio.py (the browser
test) and scripts/make_assets.py (the README's screenshot).

    python scripts/studio_browser.py http://127.0.0.1:7860/ photo.png triangle --refs 2 --screenshot page.png

Needs Playwright (pip, in requirements.txt) and a Chromium: Debian's `apt-get install chromium` (/usr/bin/chromium),
or `python -m playwright install chromium`; --chromium names another binary.
"""
import argparse
import os
import shutil
import sys
import time

# a browser that asks nothing of the network by itself: no updates, sync, safe-browsing lists or first-run pages
CHROMIUM_FLAGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync',
                  '--disable-default-apps', '--disable-extensions', '--no-first-run', '--no-default-browser-check',
                  '--metrics-recording-only', '--disable-domain-reliability', '--safebrowsing-disable-auto-update']


def find_chromium(path=None):
    """The Chromium binary: path, else $CHROMIUM, else chromium / chromium-browser on PATH; None when there is none
    (Playwright's own download is then tried)."""
    for candidate in (path, os.environ.get('CHROMIUM'), shutil.which('chromium'), shutil.which('chromium-browser')):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def is_local(url, base):
    """Requests the page may make: to its own server, or to data:/blob: URLs it made itself."""
    return url.startswith(base) or url.startswith(('data:', 'blob:'))


def drive(url, photo, domain, n_refs=1, screenshot=None, chromium=None, timeout_s=60, viewport=(1280, 900)):
    """Runs one reference-guided translation through the page. Returns a dict: outputs (PNG bytes of each output, in
    order), captions, status (the page's status line), requests (every URL the page requested)."""
    from playwright.sync_api import sync_playwright

    requests, timeout = [], timeout_s * 1000
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=find_chromium(chromium), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport=dict(width=viewport[0], height=viewport[1]))
            context.on('request', lambda r: requests.append(r.url))  # every page and worker of the context
            page = context.new_page()
            page.set_default_timeout(timeout)
            page.goto(url)
            page.wait_for_selector('#go_reference')

            page.set_input_files('#photo input[type=file]', photo)
            page.wait_for_selector('#photo img')

            page.click('#domain input')
            page.get_by_role('option', name=domain, exact=True).click()
            page.wait_for_function(  # the gallery holds the chosen domain's references once its change event is back
                "d => document.querySelector('#domain input').value === d", arg=domain)
            page.wait_for_function("() => !document.querySelector('#ref_gallery .pending, #ref_gallery .progress-text')")

            thumbs = page.locator('#ref_gallery button.thumbnail-item')
            thumbs.first.wait_for()
            for k in range(n_refs):
                thumbs.nth(k).click()
                page.wait_for_function(  # the click's event put the name among the chosen references
                    "n => [...document.querySelectorAll('#refs .token')].length >= n", arg=k + 1)
            names = [t.strip() for t in page.locator('#refs .token').all_inner_texts()]

            page.click('#go_reference')
            page.wait_for_function("() => /output\\(s\\) in/.test(document.querySelector('#status').innerText)")
            page.locator('#outputs button.thumbnail-item img').first.wait_for()
            imgs = page.locator('#outputs button.thumbnail-item img')
            srcs = [imgs.nth(k).get_attribute('src') for k in range(imgs.count())]
            captions = [imgs.nth(k).get_attribute('alt') for k in range(imgs.count())]
            outputs = [page.request.get(src).body() for src in srcs]
            status = page.inner_text('#status').strip()
            if screenshot:
                time.sleep(0.3)  # the gallery's images fade in
                page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    return dict(outputs=outputs, captions=captions, status=status, requests=requests, references=names)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('url')
    p.add_argument('photo')
    p.add_argument('domain')
    p.add_argument('--refs', type=int, default=1, help='how many gallery references to click')
    p.add_argument('--screenshot', default=None)
    p.add_argument('--chromium', default=None)
    a = p.parse_args()
    r = drive(a.url, a.photo, a.domain, a.refs, a.screenshot, a.chromium)
    outside = [u for u in r['requests'] if not is_local(u, a.url.rstrip('/'))]
    print(f'{len(r["outputs"])} output(s) ({", ".join(r["captions"])}); {r["status"]}; {len(r["requests"])} requests, '
          f'{len(outside)} outside {a.url}' + ''.join(f'\n  {u}' for u in outside))
    return 1 if outside else 0


if __name__ == '__main__':
    sys.exit(main())
