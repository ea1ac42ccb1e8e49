"""A traced forward pass: every module call, in order, with its shapes and nesting.

Forward hooks on every module of a network record each *call* (a module
called twice, such as the ``self.relu`` that torchvision's ``BasicBlock``
applies after both of its convolutions, is recorded twice), its input and
output tensors and shapes, and the calls made inside it. The detectors use the
record to choose a default feature layer (:func:`spatial_feature_layer`) and
DAFAR to mirror the encoder call by call (:mod:`advdetect.nn.decoders`).

The hooks live for the one traced pass only.
"""

import torch

__all__ = ["ModuleCall", "trace_calls", "spatial_feature_layer"]


def _shape(t):
    return tuple(int(s) for s in t.shape[1:]) if torch.is_tensor(t) else None


class ModuleCall:
    """One call of one module in a traced forward pass.

    Attributes
    ----------
    name : str
        Dotted name of the module (``""`` for the traced network itself).
    module : torch.nn.Module
    index : int
        Position of the call in the pass, in the order calls *start*.
    leaf : bool
        The module has no submodules.
    inputs : tuple of torch.Tensor
        The positional tensor inputs (other inputs are dropped).
    in_versions : tuple of int
        Their in-place version counters when the call started.
    output : object
        What the call returned (None until it returns).
    out_version : int or None
        The output's version counter when the call returned.
    children : list of ModuleCall
        The calls made inside this one, in order.
    parent : ModuleCall or None
    """

    __slots__ = ("name", "module", "index", "leaf", "inputs", "in_versions", "output",
                 "out_version", "children", "parent", "n_inputs")

    def __init__(self, name, module, index, inputs, parent):
        self.name, self.module, self.index, self.parent = name, module, index, parent
        self.leaf = not any(True for _ in module.children())
        self.n_inputs = len(inputs)
        self.inputs = tuple(t for t in inputs if torch.is_tensor(t))
        self.in_versions = tuple(t._version for t in self.inputs)
        self.output, self.out_version, self.children = None, None, []

    @property
    def in_shape(self):
        """Per-sample shape of the first input (None if it is not a tensor)."""
        return _shape(self.inputs[0]) if self.inputs else None

    @property
    def out_shape(self):
        """Per-sample shape of the output (None if it is not a tensor)."""
        return _shape(self.output)

    def __repr__(self):
        return (f"ModuleCall({self.name!r}, {type(self.module).__name__}, "
                f"{self.in_shape} -> {self.out_shape})")


def trace_calls(model, x, stop_after=None):
    """Run ``model(x)`` once under ``no_grad`` and record every module call.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        A small batch in the form ``model`` takes.
    stop_after : torch.nn.Module or None, default=None
        Stop recording new calls once this module's first call has returned
        (the calls after it are still counted in ``counts``).

    Returns
    -------
    root : ModuleCall
        The call of ``model`` itself; its ``children`` hold the tree.
    calls : list of ModuleCall
        Every recorded call, in the order the calls returned (a module's
        call comes after the calls inside it).
    counts : dict
        ``{name: number of calls}`` over the whole pass, for every module.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> relu = nn.ReLU()
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), relu, nn.Conv2d(2, 2, 3), relu)
    >>> root, calls, counts = trace_calls(net, torch.zeros(1, 1, 8, 8))
    >>> [c.name for c in root.children], counts["1"]
    (['0', '1', '2', '1'], 2)
    """
    names = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), name)
    stack, calls, counts = [], [], {}
    state = {"done": False, "root": None, "index": 0}

    def pre_hook(module, inputs):
        name = names[id(module)]
        counts[name] = counts.get(name, 0) + 1
        if state["done"]:
            stack.append(None)
            return
        parent = stack[-1] if stack else None
        call = ModuleCall(name, module, state["index"], inputs, parent)
        state["index"] += 1
        if parent is not None:
            parent.children.append(call)
        elif state["root"] is None:
            state["root"] = call
        stack.append(call)

    def post_hook(module, inputs, output):
        call = stack.pop() if stack else None
        if call is None:
            return
        call.output = output
        call.out_version = output._version if torch.is_tensor(output) else None
        calls.append(call)
        if stop_after is not None and module is stop_after:
            state["done"] = True

    handles = []
    try:
        for module in {id(m): m for _, m in model.named_modules()}.values():
            handles.append(module.register_forward_pre_hook(pre_hook))
            handles.append(module.register_forward_hook(post_hook))
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return state["root"], calls, counts


def _is_spatial(t):
    return torch.is_tensor(t) and t.ndim == 4 and t.shape[-1] * t.shape[-2] > 1


def spatial_feature_layer(model, x, skip=()):
    """The module whose output is the network's last feature map with spatial extent.

    The last output of the traced pass that is 4-D with H x W > 1: the one the
    head's flatten, global pooling or first fully connected layer reads. Of the
    modules that return that very tensor (a layer, the block around it, the
    stage around the block), the layer itself is named when it is called once
    in the pass, else the innermost enclosing module called once (a block
    whose ReLU is reused names the block). Layers of the types in ``skip``
    (dropout, identity) are passed over for the layer before them.

    Parameters
    ----------
    model : torch.nn.Module
    x : torch.Tensor
        A small batch in the form ``model`` takes.
    skip : tuple of types, default=()

    Returns
    -------
    str or None
        The dotted name; None if no module returns a 4-D output with more
        than one pixel (a network of fully connected layers).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(8, 10))
    >>> spatial_feature_layer(net, torch.zeros(1, 3, 16, 16))
    '1'
    """
    _, calls, counts = trace_calls(model, x)
    spatial = [c for c in calls if c.name and _is_spatial(c.output)]
    if not spatial:
        return None
    # An in-place layer (ReLU(inplace=True)) returns its input: walk back over
    # calls returning the same tensor to the last one that is a real layer.
    last = spatial[-1].output
    same = [c for c in calls if c.name and c.output is last]
    leaves = [c for c in same if c.leaf and not isinstance(c.module, skip)]
    if leaves and counts[leaves[-1].name] == 1:
        return leaves[-1].name
    after = leaves[-1].index if leaves else -1
    # Enclosing modules return after the layers inside them: in return order,
    # the first module called once that started before the layer encloses it.
    for c in same:
        if not c.leaf and counts[c.name] == 1 and (after < 0 or c.index < after):
            return c.name
    return (leaves or same)[-1].name
