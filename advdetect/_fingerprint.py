"""Fingerprints of a protected classifier: a SHA-256 digest of its weights and its layout.

A fitted detector records both (``classifier_digest_``, ``classifier_layout_``)
so that :func:`advdetect.load` can tell whether the classifier it
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


def check_classifier(module, saved_digest, saved_layout, strict):
    """``ValueError`` (a warning with ``strict=False``) unless ``module`` is the one fitted.

    The detector scores with its saved copy of the classifier's weights, but
    ``detector.classifier`` is the object passed to ``load``, and that is what
    ``clone(detector).fit(X)``, ``DetectAndPurify`` and a Pipeline use: a
    classifier with other weights (retrained, fine-tuned, untrained) or other
    layers would be protected by a detector calibrated on another network.
    """
    import warnings

    problems = []
    given_layout = classifier_layout(module)
    if tuple(saved_layout) != given_layout:
        saved_set, given_set = set(saved_layout), set(given_layout)
        only_saved = [x for x in saved_layout if x not in given_set]
        only_given = [x for x in given_layout if x not in saved_set]
        problems.append(f"its layers differ (fitted with {only_saved[:5]}, given "
                        f"{only_given[:5]})")
    given_digest = classifier_digest(module)
    if given_digest != saved_digest:
        problems.append(f"its weights differ (SHA-256 of the state_dict: fitted "
                        f"{str(saved_digest)[:12]}..., given {given_digest[:12]}...)")
    if not problems:
        return
    message = (
        "the classifier passed to load is not the one the detector was fitted on: "
        + "; ".join(problems) + ". The detector would score with its saved copy of the "
        "fitted classifier while detector.classifier, which clone(), refitting and "
        "DetectAndPurify use, would be the one passed. Pass the classifier with the weights "
        "the detector was fitted on; if the classifier was retrained, refit the detector on "
        "it (clone(detector).set_params(classifier=new).fit(X_clean)); strict=False loads "
        "anyway, with a warning.")
    if strict:
        raise ValueError(message)
    warnings.warn(message, UserWarning, stacklevel=4)
