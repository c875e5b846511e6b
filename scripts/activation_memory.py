"""How much memory one training iteration's activations take: the bytes autograd saves for backward, per phase.

    with SavedTensorCounter() as counter:
        solver.train_step(inputs, step)
    counter.phases     # bytes saved before each backward (D latent, D reference, G latent, G reference)
    counter.peak       # the largest: the activation memory the iteration needs at once (parameters excluded)

scripts/op_breakdown.py --activations prints it with the FLOPs. Saved tensors are counted once per storage (views
of one tensor share it); parameters (and views of them) are not activations and are left out. What it does
not see: temporaries that die inside a forward, the allocator's caching and fragmentation, and optimizer state; so
it is a lower bound of the peak of torch.cuda.max_memory_allocated minus the weights, gradients and Adam state.
"""
import torch


class SavedTensorCounter:
    def __init__(self):
        self.phases = []
        self._seen = set()
        self._bytes = 0
        self._hooks = None
        self._backward = None

    def _pack(self, t):
        # weights (saved as themselves or as views, e.g. a Linear's transposed weight; frozen ones too) are not
        # activations
        if not (isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter)):
            key = t.untyped_storage()._cdata  # the storage itself: views share it (works on the meta device)
            if key not in self._seen:
                self._seen.add(key)
                self._bytes += t.untyped_storage().nbytes()
        return t

    def _end_phase(self):
        self.phases.append(self._bytes)
        self._seen.clear()
        self._bytes = 0

    def __enter__(self):
        counter, original = self, torch.Tensor.backward

        def backward(tensor, *args, **kwargs):  # each phase of train_step ends with loss.backward()
            counter._end_phase()
            return original(tensor, *args, **kwargs)
        self._backward = original
        torch.Tensor.backward = backward
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
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
