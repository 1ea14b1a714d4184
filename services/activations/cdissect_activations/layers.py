"""Layer names: parse the module paths users type, resolve them without eval, and list them.

The reference hooks `eval("target_model." + name)`, so users write Python-like paths:
`layer4`, `layer4[2].conv3`, `encoder.layers.encoder_layer_10.mlp[1]`, `features[43]`. We accept
the same syntax (and PyTorch's dotted form `layer4.2.conv3`) with a small parser that only walks
registered submodules: no code is evaluated, and a typo yields the closest valid names.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from torch import nn

__all__ = ["LayerInfo", "UnknownLayerError", "parse_layer_path", "resolve_layer", "list_layers", "display_name",
           "channels_last_modules"]

_SEGMENT = re.compile(r"(?P<attr>[A-Za-z_][A-Za-z0-9_]*|\d+)?(?P<indexes>(?:\[\s*-?\d+\s*\])*)$")
_INDEX = re.compile(r"\[\s*(-?\d+)\s*\]")


class UnknownLayerError(LookupError, ValueError):
    """A layer path that does not name a submodule of the model."""


@dataclass(frozen=True)
class LayerInfo:
    """One hookable module: `name` in the path syntax users type, `kind` its class name."""

    name: str
    kind: str


def parse_layer_path(path: str) -> list[str | int]:
    """'layer4[2].conv3' -> ['layer4', 2, 'conv3']; 'features.43' -> ['features', 43].

    Raises ValueError for text that is not a module path (spaces, calls, empty parts).
    """
    text = (path or "").strip()
    if not text:
        raise ValueError("empty layer name; give a module path such as 'layer4' or 'layer4[2].conv3'")
    steps: list[str | int] = []
    for part in text.split("."):
        match = _SEGMENT.match(part)
        if not part or match is None or (match.group("attr") is None and not match.group("indexes")):
            raise ValueError(
                f"{path!r} is not a module path: use attribute names and [index] separated by dots, "
                f"e.g. 'layer4[2].conv3' or 'encoder.layers.encoder_layer_10.mlp[1]'"
            )
        attr = match.group("attr")
        if attr is not None:
            steps.append(int(attr) if attr.isdigit() else attr)
        steps.extend(int(i) for i in _INDEX.findall(match.group("indexes")))
    return steps


def display_name(torch_name: str) -> str:
    """PyTorch's dotted module name in the reference's syntax: 'layer4.2.conv3' -> 'layer4[2].conv3'."""
    out = ""
    for part in torch_name.split("."):
        out += f"[{part}]" if part.isdigit() else (f".{part}" if out else part)
    return out


def _child(module: nn.Module, step: str | int) -> nn.Module | None:
    children = module._modules
    if isinstance(step, int):
        if step < 0 and isinstance(module, (nn.Sequential, nn.ModuleList)):
            step += len(module)
        key = str(step)
    else:
        key = step
    child = children.get(key)
    return child if isinstance(child, nn.Module) else None


def list_layers(model: nn.Module) -> list[LayerInfo]:
    """Every submodule of `model` (not the root), in registration order, named as users type them."""
    return [LayerInfo(display_name(name), type(mod).__name__) for name, mod in model.named_modules() if name]


def resolve_layer(model: nn.Module, path: str, model_name: str | None = None) -> nn.Module:
    """The submodule of `model` at `path`; UnknownLayerError (with the closest names) if none."""
    steps = parse_layer_path(path)
    module = model
    for step in steps:
        nxt = _child(module, step)
        if nxt is None:
            raise _unknown_layer(model, path, model_name)
        module = nxt
    return module


def _unknown_layer(model: nn.Module, path: str, model_name: str | None) -> UnknownLayerError:
    names = [info.name for info in list_layers(model)]
    wanted = path.strip()
    close = difflib.get_close_matches(wanted, names, n=6, cutoff=0.6)
    if not close:  # e.g. 'layer9' vs 'layer4': compare against top-level names too
        close = difflib.get_close_matches(wanted, [n for n in names if "." not in n and "[" not in n], n=6, cutoff=0.3)
    label = model_name or type(model).__name__
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    listing = f"cdissect layers {model_name}" if model_name else "cdissect layers MODEL"
    return UnknownLayerError(
        f"unknown layer {wanted!r} in {label}.{hint} List all {len(names)} layers with `{listing}`."
    )


def channels_last_modules(model: nn.Module) -> set[int]:
    """ids of the submodules whose 4-D output is channels-last [B, H, W, C].

    Swin (and the inside of ConvNeXt blocks) switch layout with torchvision's `Permute` modules:
    dims (0, 2, 3, 1) turns [B, C, H, W] into [B, H, W, C], (0, 3, 1, 2) turns it back. Walking
    the modules in registration order (which is their forward order in these models) and
    flipping a layout flag at each Permute tells which outputs are channels-last; a container's
    output has the layout its last descendant leaves. Models without Permute modules: none.
    """
    from torchvision.ops.misc import Permute

    found: set[int] = set()
    nhwc = False

    def visit(module: nn.Module, is_root: bool) -> None:
        nonlocal nhwc
        if isinstance(module, Permute):
            dims = tuple(module.dims)
            if dims == (0, 2, 3, 1):
                nhwc = True
            elif dims == (0, 3, 1, 2):
                nhwc = False
        else:
            for child in module._modules.values():
                if child is not None:
                    visit(child, False)
        if nhwc and not is_root:
            found.add(id(module))

    visit(model, True)
    return found
