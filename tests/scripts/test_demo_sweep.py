"""scripts/demo_sweep.py: a setting's flags, the aim's check and the table (its runs are main.py's, tested there; an
end-to-end sweep draws the full demo set and takes minutes)."""
from scripts import demo_sweep as S


def row(**kw):
    r = dict(setting='s', flags={'lambda_cyc': 1}, task='shapes', iters=10, step=10, train_s=100, domain_accuracy=0.95,
             latent_domain_accuracy=0.92, style_error=0.15, style_error_chance=0.356, content_error=0.07,
             content_error_chance=0.291, latent_content_error=0.07, latent_diversity=0.12)
    r.update(kw)
    return r


def test_settings_and_the_aim():
    assert S.parse_setting('preset') == ('preset', {})
    assert S.parse_setting('x:lambda_reg=0.1,d_lr=2e-3') == ('x', {'lambda_reg': 0.1, 'd_lr': 2e-3})
    assert S.flag_list({'lambda_reg': 0.1, 'd_lr': 0.002}) == ['--d_lr', '0.002', '--lambda_reg', '0.1']
    assert S.passes(row())
    assert not S.passes(row(latent_diversity=0.1))           # under a third of the data's colour spread
    assert not S.passes(row(style_error=0.2))                # over half the chance level
    assert not S.passes(row(train_s=700))                    # over the quickstart's 10 minutes
    assert '| s | shapes | 10 (10) | 0.95 | 0.92 |' in S.table([row()])


def test_rows_of_other_data_styles_are_runs_of_their_own():
    # rows written before --colours hold no colours: the palette's
    assert S.run_key({'a': 1}, 'bars', 10) == S.run_key({'a': 1}, 'bars', 10, 'palette')
    assert S.run_key({'a': 1}, 'bars', 10) != S.run_key({'a': 1}, 'bars', 10, 'light')
    assert '| s | bars (light) |' in S.table([row(task='bars', colours='light')])
    assert S.data_dir('bars', 'palette').endswith('data_bars')
    assert S.data_dir('bars', 'light').endswith('data_bars_light')
