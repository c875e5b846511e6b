"""The memory a training iteration needs, counted without arithmetic: the bytes autograd saves for backward in each
of its four phases (a fake-tensor run of Solver.train_step), and the state that lives through training.

    counted = count_training_memory(args, micro_batch=2, local_batch=8, device=torch.device('cuda'), solver_cls=Solver)
    counted.total              # the counted peak in bytes: state + the largest phase's activations and gradients
    counted.phases             # per phase (D latent, D reference, G latent, G reference): activations, gradients

    with SavedTensorCounter() as counter:     # around any train_step
        solver.train_step(inputs, step)
    counter.phases, counter.live_peaks        # bytes saved in each phase; the most of them alive at once

Saved tensors are counted once per storage (views share it); parameters (and views of them) are weights, counted
with the state. What the count does not see: temporaries that die inside a forward or a backward (the gradient
buffers of the activations, cuDNN workspaces), the FAN's no-grad forwards, the allocator's caching and
fragmentation, and the CUDA context. Checked against the peaks measured on a GPU (docs/memory.md): the count
explains them to within 1% (float32) and 4% (bf16); MARGIN covers the rest.
"""
import torch
from munch import Munch

# --micro_batch auto asks for the counted total times this. The peaks measured on an H100 (batch 8, the code of
# commit e54c351, torch.cuda.max_memory_allocated) are 1.004-1.007 times that code's count in float32 and 1.02-1.04
# in bf16 (docs/memory.md); the rest is for what the count leaves out: the allocator's cached but unused blocks
# (reserved - allocated, not measured) and cuDNN workspaces
MARGIN = 1.15

PHASES = ('D latent', 'D reference', 'G latent', 'G reference')
OPTIMISED = ('generator', 'mapping_network', 'style_encoder', 'discriminator')


class _Saved:
    """What autograd holds for a saved tensor while the counter runs: its release (the graph freed, or the backward
    past it) tells the counter that the storage may be free."""
    __slots__ = ('tensor', 'counter', 'key')

    def __init__(self, tensor, counter, key):
        self.tensor, self.counter, self.key = tensor, counter, key

    def __del__(self):
        if self.key is not None:
            self.counter._release(self.key)


class SavedTensorCounter:
    """phases: the bytes saved in each phase (up to each backward), every storage once while saved; live_peaks: the most of them
    alive at once in each phase (less than the sum where a graph is dropped before the backward, e.g. an output
    detached from its graph)."""

    def __init__(self):
        self.phases = []
        self.live_peaks = []
        self._seen = set()
        self._bytes = 0
        self._live = {}  # storage key -> [holders, bytes]
        self._live_bytes = 0
        self._live_peak = 0
        self._phase_start = False
        self._hooks = None
        self._backward = None

    def _pack(self, t):
        # weights (saved as themselves or as views, e.g. a Linear's transposed weight; frozen ones too) are not
        # activations
        if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):
            return _Saved(t, self, None)
        key = t.untyped_storage()._cdata  # the storage itself: views share it (works on fake tensors)
        nbytes = t.untyped_storage().nbytes()
        if key not in self._seen:
            self._seen.add(key)
            self._bytes += nbytes
        if self._phase_start:  # the first save after a backward: the phase starts from what that backward left
            self._live_peak, self._phase_start = self._live_bytes, False
        entry = self._live.setdefault(key, [0, nbytes])
        if entry[0] == 0:
            self._live_bytes += nbytes
            self._live_peak = max(self._live_peak, self._live_bytes)
        entry[0] += 1
        # a detached alias (the same storage and version counter): the tensor itself would tie a saved output to its
        # own grad_fn in a reference cycle, and a graph dropped unused would then wait for the garbage collector
        return _Saved(t.detach(), self, key)

    def _release(self, key):
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            self._live_bytes -= entry[1]
            del self._live[key]
            # no graph holds it now: the storage may be freed and its address given to a new one, which must count
            self._seen.discard(key)

    def _end_phase(self):
        self.phases.append(self._bytes)
        self.live_peaks.append(self._live_peak)
        self._seen.clear()
        self._bytes = 0
        self._phase_start = True

    def __enter__(self):
        counter, original = self, torch.Tensor.backward

        def backward(tensor, *args, **kwargs):  # each phase of train_step ends with loss.backward()
            counter._end_phase()
            return original(tensor, *args, **kwargs)
        self._backward = original
        torch.Tensor.backward = backward
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda saved: saved.tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        torch.Tensor.backward = self._backward
        if self._bytes:
            self._end_phase()

    @property
    def peak(self):
        return max(self.phases, default=0)


def to_fake(solver, device=None):
    """Every parameter and buffer of the solver replaced by a fake tensor of the same shape (no data; on `device` if
    given, e.g. cuda, so that autocast and the kernels' choices are that device's), the optimizer steps by no-ops;
    returns the FakeTensorMode to run the iteration under."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    mode = FakeTensorMode()

    def fake(t):
        if device is None or t.device == device:
            return mode.from_tensor(t)
        return mode.fake_tensor_converter.from_meta_and_device(mode, t.to('meta'), device)
    new = {}
    for m in solver.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:
                new[p] = m._parameters[k] = torch.nn.Parameter(fake(p.detach()), requires_grad=p.requires_grad)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = fake(b)
    for optim in solver.optims.values():
        for group in optim.param_groups:  # so that zero_grad clears the fake parameters' gradients
            group['params'] = [new.get(p, p) for p in group['params']]
        optim.step = lambda *a, **k: None
    if device is not None:
        solver.device = torch.device(device)
    return mode


def _nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def state_bytes(nets, nets_ema):
    """The bytes that live through training: weights (and buffers) of the trained networks, their EMA copies, the
    FAN (shared by both), and Adam's two moments of every optimised parameter."""
    def weights(net):
        return _nbytes(list(net.parameters()) + list(net.buffers()))
    params = {k: _nbytes(list(nets[k].parameters())) for k in OPTIMISED}
    return Munch(weights=sum(weights(nets[k]) for k in OPTIMISED),
                 ema=sum(weights(nets_ema[k]) for k in nets_ema if k != 'fan'),
                 fan=weights(nets.fan) if 'fan' in nets else 0,
                 adam=2 * sum(params.values()))  # exp_avg and exp_avg_sq (beta1 = 0 still keeps exp_avg)


def _fake_inputs(args, batch, device):
    S, B = args.img_size, batch
    return Munch(x_src=torch.empty(B, 3, S, S, device=device), y_src=torch.zeros(B, dtype=torch.long, device=device),
                 x_ref=torch.empty(B, 3, S, S, device=device), x_ref2=torch.empty(B, 3, S, S, device=device),
                 y_ref=torch.zeros(B, dtype=torch.long, device=device),
                 z_trg=torch.empty(B, args.latent_dim, device=device),
                 z_trg2=torch.empty(B, args.latent_dim, device=device))


def count_training_memory(args, micro_batch, local_batch=None, device=None, *, solver_cls):
    """The counted memory of one training iteration in chunks of micro_batch images of a batch of local_batch
    (default: micro_batch) per process, on `device`'s kind (default cpu): a Munch of bytes with state (state_bytes),
    inputs (the batch and its masks), phases [Munch(name, activations, grads)] and total = weights + EMA + FAN +
    Adam + inputs + the largest phase's activations + gradients. Builds its own networks (on the CPU, then faked):
    the caller's are untouched. solver_cls: the Solver whose step is counted (core.solver.Solver; given, not imported,
    since the Solver itself asks for the count under --micro_batch auto). --compile is not applied (the count is the eager computation's)."""
    local_batch = local_batch or micro_batch
    device = torch.device(device or 'cpu')
    if device.type == 'cuda' and torch.cuda.is_available():
        try:
            return _count(args, micro_batch, local_batch, device, solver_cls)
        except Exception as e:  # fake CUDA tensors are newer than some PyTorch versions: the CPU's count instead
            counted = _count(args, micro_batch, local_batch, torch.device('cpu'), solver_cls)
            counted.device = f'cpu (fake CUDA tensors failed: {type(e).__name__})'
            return counted
    # fake CUDA tensors need a device (autocast, the primary context): without one, the CPU's count (the same in
    # float32; with --amp, the CPU's autocast)
    return _count(args, micro_batch, local_batch, torch.device('cpu'), solver_cls)


def _count(args, micro_batch, local_batch, device, solver_cls):
    counting = Munch(args, mode='train', batch_size=micro_batch, micro_batch=0, compile=False, resume_iter=0,
                     init_from=None)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is not moved by the throwaway init
        solver = solver_cls(counting, 'cpu')
    solver.micro_batch = 0  # one chunk of micro_batch images (under torchrun its batch_size is not divided)
    state = state_bytes(solver.nets, solver.nets_ema)
    mode = to_fake(solver, device)
    # the gradients each phase leaves, read where the next phase (or the end) sets them to None: whatever the phase
    # computes (frozen networks get none), without assuming it
    grads = []
    first = next(iter(solver.optims.values()))

    def zero_grad(*a, _zero_grad=first.zero_grad, **k):
        grads.append(_nbytes([p.grad for net in solver.nets.values() for p in net.parameters()
                              if p.grad is not None]))
        return _zero_grad(*a, **k)
    first.zero_grad = zero_grad
    with mode:
        inputs = _fake_inputs(args, micro_batch, device)
        with SavedTensorCounter() as saved:
            solver.train_step(inputs, 0)
        zero_grad()
    S = args.img_size
    n_masks = 2 if 'fan' in solver.nets else 0
    inputs_bytes = local_batch * (3 * 3 * S * S + n_masks * S * S) * 4  # x_src, x_ref, x_ref2; the two masks
    # the most saved bytes alive at once in each phase (what the allocator must hold before the backward frees them)
    phases = [Munch(name=name, activations=act, grads=g)
              for name, act, g in zip(PHASES, saved.live_peaks, grads[1:])]
    largest = max(p.activations + p.grads for p in phases)
    total = state.weights + state.ema + state.fan + state.adam + inputs_bytes + largest
    return Munch(micro_batch=micro_batch, local_batch=local_batch, device=str(device), amp=args.amp, state=state,
                 inputs=inputs_bytes, phases=phases, total=total)
