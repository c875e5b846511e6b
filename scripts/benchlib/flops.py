"""FLOPs of one training iteration: torch.utils.flop_counter.FlopCounterMode (convolutions and matmuls, forward and
backward, R1's double backward and the FAN included), with a bare-dispatch fallback for PyTorch versions where that
route breaks."""
import sys
import traceback

from munch import Munch

from benchlib.timing import free_memory, sync
from benchlib.workload import count_params, new_solver


class NoModuleTracker:
    parents = ('Global',)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


class _FlopCounterFallback:
    """The same formulas (torch.utils.flop_counter.flop_registry) in a bare TorchDispatchMode: used only if the
    FlopCounterMode route fails on another PyTorch version."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.counts = {}

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                packet = func._overloadpacket
                if packet in flop_registry:
                    n = flop_registry[packet](*args, **kwargs, out_val=out)
                    self.counts[str(packet)] = self.counts.get(str(packet), 0) + int(n)
                return out
        return Mode()


def count_flops(args, device, inputs, skip_unused_grads=True):
    """FLOPs of one eager iteration on the device (the count does not depend on compile or autocast), the count per
    op, and the parameter counts. skip_unused_grads=False: the reference's work."""
    from torch.utils.flop_counter import FlopCounterMode
    a = Munch(args, compile=False, amp='none')
    errors = []
    for route in ('FlopCounterMode', 'fallback'):
        solver = new_solver(a, device, skip_unused_grads)
        try:
            params = count_params(solver)
            if route == 'FlopCounterMode':
                counter = FlopCounterMode(display=False)
                # its module tracker (backward hooks) breaks autograd.grad (R1: "A leaf node was passed to
                # _will_engine_execute_node ..."): count every op under 'Global', without attributing it to modules
                counter.mod_tracker = NoModuleTracker()
                with counter:
                    solver.train_step(inputs, 0)
                sync(device)
                by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get('Global', {}).items()}
            else:
                mode = _FlopCounterFallback()
                with mode:
                    solver.train_step(inputs, 0)
                sync(device)
                by_op = mode.counts
            return int(sum(by_op.values())), by_op, params
        except Exception as e:
            errors.append(f'{route}: {type(e).__name__}: {e}')
            print(traceback.format_exc(), file=sys.stderr)
        finally:
            del solver
            free_memory(device)
    raise RuntimeError('; '.join(errors))

