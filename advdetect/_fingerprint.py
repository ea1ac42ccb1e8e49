"""Fingerprints of a protected classifier: a SHA-256 digest of its weights and its layout.

A fitted detector records both (``classifier_digest_``, ``classifier_layout_``)
so that :func:`advdetect.persistence.load` can tell whether the classifier it
is handed is the one the detector was fitted on, and say what differs.
"""

import hashlib
import json

import torch

__all__ = ["classifier_digest", "classifier_layout"]


def _is_uninitialized(tensor):
    return isinstance(tensor, (torch.nn.parameter.UninitializedParameter,
                               torch.nn.parameter.UninitializedBuffer))


def classifier_digest(module):
    """SHA-256 (hex) of a module's ``state_dict``: names, dtypes, shapes and bytes.

    Entries are taken in sorted order of their names, each on the CPU and
    contiguous, so the digest depends neither on the device nor on the
    registration order. A lazy layer not yet sized contributes its name only.

    Examples
    --------
    >>> import torch
    >>> a = torch.nn.Linear(3, 2)
    >>> b = torch.nn.Linear(3, 2)
    >>> _ = b.load_state_dict(a.state_dict())
    >>> classifier_digest(a) == classifier_digest(b), len(classifier_digest(a))
    (True, 64)
    >>> with torch.no_grad():
    ...     _ = b.weight.add_(1e-6)
    >>> classifier_digest(a) == classifier_digest(b)
    False
    """
    h = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        t = state[name]
        if _is_uninitialized(t):
            h.update(json.dumps([name, "uninitialized"]).encode())
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def classifier_layout(module):
    """The module tree as ``("name: ClassName", ...)``, the layers without weights included.

    The weights alone do not tell a ReLU from a Tanh; this does. A lazy
    layer is named by the class it becomes (``LazyLinear`` -> ``Linear``).

    Examples
    --------
    >>> import torch
    >>> classifier_layout(torch.nn.Sequential(torch.nn.LazyLinear(4), torch.nn.ReLU()))
    (': Sequential', '0: Linear', '1: ReLU')
    """
    out = []
    for name, sub in module.named_modules():
        cls = getattr(type(sub), "cls_to_become", None) or type(sub)
        out.append(f"{name}: {cls.__name__}")
    return tuple(out)
