"""Shared test helpers: where ../shared lives, the golden values, tiny configs."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / 'shared'
GOLDEN_DIR = SHARED / 'spec' / 'golden'
SCHEMA = SHARED / 'spec' / 'state_dict_schema.json'
DATA = SHARED / 'data' / 'representative'

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# One torch thread per test process (this one and the runs it starts, through OMP_NUM_THREADS): the tests' networks
# are tiny, and on a machine busy with other work two threads per process wait on each other at every operation
# (docs/benchmarks.md, "The test suite"). STARGAN_TEST_THREADS=0 keeps PyTorch's default (one per core).
TEST_THREADS = int(os.environ.get('STARGAN_TEST_THREADS', '1'))
if TEST_THREADS > 0:
    os.environ.setdefault('OMP_NUM_THREADS', str(TEST_THREADS))
    torch.set_num_threads(TEST_THREADS)


@pytest.fixture(scope='session')
def golden():
    if not (GOLDEN_DIR / 'golden.json').exists():
        pytest.skip('../shared/spec/golden is absent')
    if str(GOLDEN_DIR) not in sys.path:
        sys.path.insert(0, str(GOLDEN_DIR))
    import fill
    return fill, json.loads((GOLDEN_DIR / 'golden.json').read_text())


@pytest.fixture(scope='session')
def schema():
    if not SCHEMA.exists():
        pytest.skip('../shared/spec/state_dict_schema.json is absent')
    return json.loads(SCHEMA.read_text())


@pytest.fixture(scope='module')
def one_thread():
    """One torch thread for a module whatever STARGAN_TEST_THREADS says: small networks gain nothing from threads,
    and on a busy 2-core machine two threads make the FAN and tiny convolutions several times slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def random_wing(tmp_path):
    """A wing.ckpt with randomly initialised FAN weights (the real one cannot be downloaded here)."""
    from core.wing import FAN
    torch.manual_seed(0)
    fname = tmp_path / 'wing.ckpt'
    torch.save({'state_dict': FAN().state_dict()}, fname)
    return str(fname)


def tiny_args(**kw):
    """A narrow configuration that trains in well under a second per iteration on a CPU."""
    from core.config import parse_args
    args = parse_args(['--mode', 'train', '--device', 'cpu'])
    args.update(img_size=32, num_domains=2, w_hpf=0, base_dim=8, max_conv_dim=16, hidden_dim=16, style_dim=16,
                latent_dim=8, batch_size=2, val_batch_size=2, num_workers=0, print_every=1, sample_every=0,
                save_every=0, eval_every=0, num_outs_per_domain=2, ds_iter=10, total_iters=2)
    args.update(kw)
    return args
