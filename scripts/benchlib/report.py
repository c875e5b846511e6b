"""The benchmark's report: the side-by-side table on stderr, the JSON file (rewritten after every mode), the JSON
printed on stdout (without the per-iteration lists), the profiler's top ops."""
import json
import os
import sys


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def profile_table(prof, device, trace, mode_name, n_top=25):
    on_dev = device.type == 'cuda'
    key = 'self_device_time_total' if on_dev else 'self_cpu_time_total'
    avgs = prof.key_averages()
    log(avgs.table(sort_by=key, row_limit=n_top))
    rows = sorted(avgs, key=lambda e: getattr(e, key, 0), reverse=True)[:n_top]
    top = [dict(name=e.key, calls=e.count, self_device_ms=round(getattr(e, 'self_device_time_total', 0) / 1e3, 3),
                self_cpu_ms=round(e.self_cpu_time_total / 1e3, 3)) for e in rows]
    out = dict(sort_by=key, top_ops=top)
    if trace:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(trace)), exist_ok=True)
            prof.export_chrome_trace(trace)
            out['trace'] = trace
            log(f'chrome trace of {mode_name}: {trace} ({os.path.getsize(trace) / 2 ** 20:.1f} MiB)')
        except Exception as e:
            out['trace_error'] = f'{type(e).__name__}: {e}'
    return out


def fmt(v, spec):
    return 'n/a' if v is None else format(v, spec)


def print_table(report):
    rows = report['results']
    base = next((r for r in rows if r['mode'] == 'eager' and r['status'] == 'ok'), None)
    num = report.get('numerics') or {}
    log('')
    c = report['config']
    log(f"StarGAN v2 train_step, {report['env'].get('device_name')} ({report['env']['device']}), preset {c['preset']}, "
        f"img {c['img_size']}, batch {c['batch_size']}, w_hpf {c['w_hpf']}, loader {report['flags']['loader']}; "
        f"FLOPs/iter {fmt(report.get('flops_per_iter'), '.4g')}")
    hdr = (f"{'mode':<14}{'s/it med':>10}{'s/it mean':>10}{'it/s':>8}{'TFLOP/s':>9}{'peak GiB':>9}{'speedup':>8}"
           f"{'1st it s':>9}{'weight rel':>11}{'update rel':>11}{'grad rel':>10}{'loss rel':>10}{'loss1 rel':>10}")
    log(hdr)
    for r in rows:
        nm = num.get(r['mode'], {})
        if r['status'] != 'ok':
            log(f"{r['mode']:<14}{r['status']}: {r.get('error', r.get('reason', ''))[:150]}")
            continue
        sp = base['s_per_iter'] / r['s_per_iter'] if base else None
        log(f"{r['mode']:<14}{r['s_per_iter_median']:>10.4f}{r['s_per_iter']:>10.4f}{r['it_per_s']:>8.2f}"
            f"{fmt(r.get('tflops'), '.2f'):>9}{fmt(r.get('peak_mem_gib'), '.2f'):>9}{fmt(sp, '.2f'):>8}"
            f"{fmt(r.get('first_iter_s'), '.1f'):>9}{fmt(nm.get('weight_max_rel_diff'), '.2e'):>11}"
            f"{fmt(nm.get('update_rel_l2'), '.2e'):>11}{fmt(nm.get('grad_rel_l2'), '.2e'):>10}"
            f"{fmt(nm.get('loss_max_rel_diff'), '.2e'):>10}{fmt(nm.get('loss_first_step_max_rel_diff'), '.2e'):>10}")
    for k in ('eager_repeat', 'eager_no_tf32'):
        if k in num and 'error' not in num[k]:
            nm = num[k]
            log(f"{k:<14}{'(numerics reference: one iteration only)':>63}"
                f"{fmt(nm.get('weight_max_rel_diff'), '.2e'):>11}{fmt(nm.get('update_rel_l2'), '.2e'):>11}"
                f"{fmt(nm.get('grad_rel_l2'), '.2e'):>10}{fmt(nm.get('loss_max_rel_diff'), '.2e'):>10}"
                f"{fmt(nm.get('loss_first_step_max_rel_diff'), '.2e'):>10}")
    if num:
        log('numerics: one iteration from the same weights and batch vs eager; weight rel = max|dW|/max|W| per '
            'conv/linear weight; update/grad rel = relative L2; loss1 = the D/latent terms, before any optimiser step')
    log('')


def write_json(report, path, complete, elapsed_s):
    report['complete'] = complete
    report['elapsed_s'] = round(elapsed_s, 1)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + '.tmp'
        with open(tmp, 'w') as f:
            json.dump(report, f, indent=1, default=str)
        os.replace(tmp, path)


def stdout_view(report):
    """The printed JSON: the per-iteration lists stay in the --json file only."""
    def strip(r):
        return {k: v for k, v in r.items() if k != 'per_iter_s'}
    out = dict(report)
    out['results'] = [strip(r) for r in report['results']]
    out.pop('per_iter_s', None)
    return out

