"""A sweep of the demo's settings over the family of tasks (core/demo/data.TASKS), one row per (setting, task, step)
appended to a results file kept in the repository, so that a sweep can stop, continue and be read later.

    python scripts/demo_sweep.py --settings preset,cyc1 --tasks all --iters 1500 --jobs 2   # train, score, append
    python scripts/demo_sweep.py --table                   # the table of every row so far
    python scripts/demo_sweep.py --table --final           # per setting and task: the last and the best step

Each run is `main.py --mode train --preset demo --demo_task TASK` with the setting's flags, one thread, `nice`d, under
expr/sweep/; its checkpoints at --points evenly spaced steps are scored like the quickstart (core/demo/score.py), so
that one run gives a learning curve. A (setting, task, iterations) already in the results file is skipped. A setting
is a name in SETTINGS or an ad-hoc `name:flag=value,flag=value`. Time: the training's wall time up to that step
(scaled from the run's), on the machine as it was (docs/demo.md says which).
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from core.config import DEMO_COLOURS, DEMO_TASKS, PRESETS  # noqa: E402

RESULTS = os.path.join(REPO, 'docs', 'demo_sweep', 'results.jsonl')
WORK = os.path.join(REPO, 'expr', 'sweep')

# name -> the flags it sets over the demo preset (core/config.py). Each spells out the preset's own values it relies
# on, so that a row of the results file keeps its meaning when the preset changes ('preset': whatever it is now).
# the preset's own numbers when the run was made (a row's full setting: these, then its flags)
PRESET_NOW = {k: v for k, v in PRESETS['demo'].items() if not isinstance(v, str)}
PRESET_1100 = dict(lambda_cyc=2, f_lr=1e-5, lambda_reg=1)  # the preset until 2026-12-07 (1,100 iterations)
SETTINGS = {
    'preset': {},
    'preset_1100': PRESET_1100,
    'cyc1': dict(PRESET_1100, lambda_cyc=1),
    'cyc05': dict(PRESET_1100, lambda_cyc=0.5),
    'cyc1_reg01': dict(PRESET_1100, lambda_cyc=1, lambda_reg=0.1),
    'cyc1_dlr2': dict(PRESET_1100, lambda_cyc=1, d_lr=2e-3),
    'cyc05_reg01': dict(PRESET_1100, lambda_cyc=0.5, lambda_reg=0.1),
    'cyc05_reg01_dlr2': dict(PRESET_1100, lambda_cyc=0.5, lambda_reg=0.1, d_lr=2e-3),
    'cyc1_f1e4': dict(PRESET_1100, lambda_cyc=1, f_lr=1e-4),
    'cyc1_f1e4_reg01': dict(lambda_cyc=1, f_lr=1e-4, lambda_reg=0.1),  # the preset since 2026-12-07
    'cyc1_f1e3_reg01': dict(lambda_cyc=1, f_lr=1e-3, lambda_reg=0.1),
    'cyc1_f1e4_reg01_sty2': dict(lambda_cyc=1, f_lr=1e-4, lambda_reg=0.1, lambda_sty=2),
    'cyc1_f1e4_reg01_ds2': dict(lambda_cyc=1, f_lr=1e-4, lambda_reg=0.1, lambda_ds=2),
    'cyc1_f1e4_reg001': dict(lambda_cyc=1, f_lr=1e-4, lambda_reg=0.01),
    'cyc1_f1e4_reg01_dlr2': dict(lambda_cyc=1, f_lr=1e-4, lambda_reg=0.1, d_lr=2e-3),
}


def parse_setting(text):
    """A SETTINGS name, or name:flag=value,flag=value -> (name, flags)."""
    if ':' not in text:
        return text, SETTINGS[text]
    name, spec = text.split(':', 1)
    flags = {}
    for item in filter(None, spec.split(',')):
        k, v = item.split('=')
        flags[k] = json.loads(v) if v[:1] in '0123456789-.' else v
    return name, flags


def read_rows(path=RESULTS):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_key(flags, task, iters, colours='palette'):
    return json.dumps(flags, sort_keys=True), task, iters, colours


def flag_list(flags):
    out = []
    for k, v in sorted(flags.items()):
        out += [f'--{k}', str(v)]
    return out


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def logged_wall(log):
    """The training loop's time from the last progress line of a run's log (tqdm's elapsed), in seconds."""
    import re
    with open(log, errors='replace') as f:
        found = re.findall(r'\| *\d+/\d+ \[(?:(\d+):)?(\d+):(\d+)<', f.read())
    h, m, sec = found[-1]
    return int(h or 0) * 3600 + int(m) * 60 + int(sec)


def data_dir(task, colours):
    return os.path.join(WORK, f'data_{task}' if colours == 'palette' else f'data_{task}_{colours}')


def train_and_score(name, flags, task, iters, points, lock, results, colours='palette'):
    tag = f'{name}__{task}__{iters}' + ('' if colours == 'palette' else f'__{colours}')
    root = os.path.join(WORK, tag)
    data = data_dir(task, colours)
    # the saved steps: multiples of the first (--save_every) and the last
    steps = sorted({iters // points * (k + 1) for k in range(points - 1)} | {iters})
    dirs = ['--train_img_dir', f'{data}/train', '--val_img_dir', f'{data}/val', '--src_dir', f'{data}/src',
            '--ref_dir', f'{data}/ref', '--checkpoint_dir', f'{root}/ckpt', '--sample_dir', f'{root}/samples']
    common = ['--preset', 'demo', '--demo_task', task, '--demo_colours', colours, '--device', 'cpu'] + dirs + \
        flag_list(flags)
    os.makedirs(root, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=REPO)
    cmd = ['nice', '-n', '10', sys.executable, 'main.py', '--mode', 'train', *common, '--total_iters', str(iters),
           '--save_every', str(steps[0]), '--sample_every', str(steps[0]), '--print_every', '100']
    pid_file, final = f'{root}/pid', f'{root}/ckpt/demo_score_{iters:06d}.json'
    while os.path.exists(pid_file) and alive(int(open(pid_file).read())):  # an earlier sweep's run, still going
        time.sleep(20)
    if os.path.exists(final):  # trained by an earlier sweep that stopped before writing its rows
        wall = logged_wall(f'{root}/train.log')
    else:
        t0 = time.time()
        with open(f'{root}/train.log', 'w') as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
            with open(pid_file, 'w') as f:
                f.write(str(proc.pid))
            rc = proc.wait()
        wall = time.time() - t0
        if rc != 0:
            print(f'{tag}: training failed (rc {rc}), see {root}/train.log', flush=True)
            return
    rows = []
    for s in steps:
        fname = f'{root}/ckpt/demo_score_{s:06d}.json'
        if not os.path.exists(fname):
            with open(f'{root}/score.log', 'a') as log:
                subprocess.call(['nice', '-n', '10', sys.executable, '-m', 'core.demo.score', *common,
                                 '--resume_iter', str(s)], cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        with open(fname) as f:
            score = json.load(f)
        rows.append(dict(setting=name, flags=flags, preset=PRESET_NOW, task=task, colours=colours, iters=iters, step=s,
                         train_s=round(wall * s / iters),
                         run_wall_s=round(wall), date=time.strftime('%Y-%m-%d'),
                         **{k: v for k, v in score.items() if k not in ('step', 'task', 'domains')}))
    with lock:
        with open(results, 'a') as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True) + '\n')
    for r in rows:
        print(fmt_row(r), flush=True)


def passes(r, budget_s=600):
    """Deliverable 4 of the quickstart's aim: domain >= 0.9 (both), style <= chance / 2, content <= chance / 4,
    latent diversity >= the data's / 3 (budget_s: the training's share of the 10 minutes)."""
    return (r['domain_accuracy'] >= 0.9 and r['latent_domain_accuracy'] >= 0.9
            and r['style_error'] <= r['style_error_chance'] / 2
            and r['content_error'] <= r['content_error_chance'] / 4
            and r['latent_content_error'] <= r['content_error_chance'] / 4
            and r['latent_diversity'] >= r['style_error_chance'] / 3 and r['train_s'] <= budget_s)


HEADER = ('| setting | task | step (of) | domain | latent domain | style (chance) | content (chance) | '
          'latent content | diversity (data) | train s | aim |\n'
          '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')


def task_label(r):
    colours = r.get('colours', 'palette')  # rows before --colours: the palette
    return r['task'] if colours == 'palette' else f"{r['task']} ({colours})"


def fmt_row(r):
    return ('| %s | %s | %d (%d) | %.2f | %.2f | %.3f (%.3f) | %.3f (%.3f) | %.3f | %.3f (%.3f) | %d | %s |' % (
        r['setting'], task_label(r), r['step'], r['iters'], r['domain_accuracy'], r['latent_domain_accuracy'],
        r['style_error'], r['style_error_chance'], r['content_error'], r['content_error_chance'], r['latent_content_error'],
        r['latent_diversity'], r['style_error_chance'], r['train_s'], 'yes' if passes(r) else ''))


def summary(rows):
    """Per (setting, task), from its longest run (runs are deterministic: a shorter one repeats its first steps): the
    last step, and the step of the best domain accuracy (the lower of reference- and latent-guided) when earlier."""
    runs = {}
    for r in rows:
        key = (r['setting'], task_label(r))
        if r['iters'] >= runs.get(key, [dict(iters=-1)])[0]['iters']:
            runs[key] = [x for x in runs.get(key, []) if x['iters'] == r['iters']] + [r]
    out = []
    for rs in runs.values():
        last = max(rs, key=lambda r: r['step'])
        best = max(rs, key=lambda r: (min(r['domain_accuracy'], r['latent_domain_accuracy']), r['step']))
        out += [best, last] if best is not last else [last]
    return out


def table(rows, final=False):
    if final:
        rows = summary(rows)
    return '\n'.join([HEADER] + [fmt_row(r) for r in rows])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--settings', default='preset', help='comma-separated SETTINGS names or name:flag=v,flag=v '
                   '(separate several ad-hoc ones with ;)')
    p.add_argument('--tasks', default='shapes', help='comma-separated tasks, or all')
    p.add_argument('--iters', type=int, default=1500)
    p.add_argument('--points', type=int, default=3, help='scored checkpoints per run, evenly spaced')
    p.add_argument('--jobs', type=int, default=2, help='runs at once (one thread each)')
    p.add_argument('--colours', default=DEMO_COLOURS[0], choices=DEMO_COLOURS,
                   help='the data\'s styles (--demo_colours)')
    p.add_argument('--results', default=RESULTS)
    p.add_argument('--table', action='store_true', help='print the table and exit')
    p.add_argument('--final', action='store_true', help='the table: per setting and task, the last step of its longest '
                   'run and the step of its best domain accuracy')
    a = p.parse_args(argv)
    if a.table:
        print(table(read_rows(a.results), a.final))
        return
    tasks = list(DEMO_TASKS) if a.tasks == 'all' else a.tasks.split(',')
    sep = ';' if ';' in a.settings or ':' in a.settings else ','
    settings = [parse_setting(s.strip()) for s in a.settings.split(sep) if s.strip()]
    done = {run_key(r['flags'], r['task'], r['iters'], r.get('colours', 'palette')) for r in read_rows(a.results)}
    todo = [(n, f, t) for n, f in settings for t in tasks if run_key(f, t, a.iters, a.colours) not in done]
    print(f'{len(todo)} run(s) to do, {len(settings) * len(tasks) - len(todo)} already in {a.results}', flush=True)
    from core.demo.data import make_demo_dataset
    for t in {t for _, _, t in todo}:  # drawn once, before runs that share it start
        make_demo_dataset(data_dir(t, a.colours), task=t, colours=a.colours)
    os.makedirs(os.path.dirname(a.results), exist_ok=True)
    lock = threading.Lock()
    with ThreadPoolExecutor(a.jobs) as pool:
        for fut in [pool.submit(train_and_score, n, f, t, a.iters, a.points, lock, a.results, a.colours)
                    for n, f, t in todo]:
            fut.result()
    print(table(read_rows(a.results)))


if __name__ == '__main__':
    main()
