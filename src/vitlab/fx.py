"""torch.fx symbolic tracing of vitlab models (torchvision-style feature extraction, graph rewriting).

Input checks and shape arithmetic that branch on tensor sizes cannot be traced; they are plain functions registered
with `notrace`, which the tracer records as opaque calls (timm's `register_notrace_function`). Trace with
`symbolic_trace(model)`, or pass `tracer_kwargs()` to torchvision's `create_feature_extractor`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace

_NOTRACE_FUNCTIONS: list[Callable] = []
_LEAF_MODULES: list[type[nn.Module]] = []


def notrace(fn: Callable) -> Callable:
    """Decorator: `fn` appears as one call in traced graphs instead of being traced through."""
    _NOTRACE_FUNCTIONS.append(fn)
    return fn


def notrace_module(cls: type[nn.Module]) -> type[nn.Module]:
    """Decorator: instances of `cls` are leaf modules in traced graphs."""
    _LEAF_MODULES.append(cls)
    return cls


def is_tracing() -> bool:
    """True while torch.fx traces: code that picks a kernel from runtime facts (device, requires_grad) takes the
    branch that is right everywhere. False in TorchScript, which cannot ask (and is never tracing)."""
    if torch.jit.is_scripting():
        return False
    else:
        return _symbolic_trace.is_fx_symbolic_tracing()


def tracer_kwargs() -> dict:
    """The tracer settings vitlab models need (torchvision's `create_feature_extractor(..., tracer_kwargs=...)`)."""
    return dict(
        leaf_modules=list(_LEAF_MODULES), autowrap_functions=tuple(_NOTRACE_FUNCTIONS), param_shapes_constant=True
    )


class _Tracer(fx.Tracer):
    def __init__(self) -> None:
        kw = tracer_kwargs()
        self._leaf_types = tuple(kw.pop("leaf_modules"))
        super().__init__(**kw)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaf_types) or super().is_leaf_module(m, qualname)


def symbolic_trace(model: nn.Module) -> fx.GraphModule:
    """`model` traced in its current mode (train or eval) into a GraphModule with the same outputs."""
    tracer = _Tracer()
    graph = tracer.trace(model)
    name = getattr(model, "model_name", type(model).__name__)
    # the class name of the generated module: an identifier (timm's tagged names, `vit_small_patch16_224.dino`)
    return fx.GraphModule(tracer.root, graph, re.sub(r"\W", "_", name))


def create_fx_model(model: nn.Module, train: bool = False) -> fx.GraphModule:
    """The model traced in train or eval mode, returning {node name: output} as torchvision's feature extractor.

    Uses torchvision's `create_feature_extractor` (the last node of each mode's graph) when torchvision is
    installed, plain torch.fx otherwise.
    """
    try:
        from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    except ImportError:
        model.train(train)
        gm = symbolic_trace(model)
        (out,) = [n for n in gm.graph.nodes if n.op == "output"]
        value = out.args[0]
        out.args = ({getattr(value, "name", "output"): value},)
        out.type = None  # the copied `-> Tensor` annotation no longer holds (TorchScript checks it)
        gm.recompile()
        return gm
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs())
    return create_feature_extractor(
        model,
        train_return_nodes=[train_nodes[-1]],
        eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs(),
    )
