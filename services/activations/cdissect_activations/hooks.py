"""Record many layers of a network in one forward pass with forward hooks.

`LayerRecorder` registers one hook per requested layer; each hook pools its output on the
device right away (pooling.py), so only [B, units] per layer is kept, never the full maps.
Hooks are removed when the `with` block ends (or after `record` when used without one).
A layer given sparse-autoencoder `features` is encoded into SAE latents per position or token
and pooled in the same hook (sae.encode_pooled), so its output is [B, latents].

    with LayerRecorder(model, ["conv1", "layer4", "fc"]) as rec:
        acts = rec.record(images)          # {"conv1": [B, 64], "layer4": [B, 2048], "fc": [B, 1000]}
"""
from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import torch
from torch import nn

from .layers import channels_last_modules, display_name, resolve_layer
from .pooling import DEFAULT_LAYOUT, TokenLayout, check_pooling, first_tensor, pool, positions, standard_layout
from .sae import SparseAutoencoder, encode_pooled


class RepeatedLayerError(ValueError):
    """A requested module runs more than once per forward pass, so it has no single output."""


class LayerRecorder:
    """Forward hooks on `layers` of `model`; `record(x)` runs one forward and returns pooled outputs.

    pooling: 'avg' | 'max' for 4-D conv maps. token_pooling: 'cls' | 'mean' | 'patch_mean' for
    3-D token outputs. Channels-last maps (Swin stages) are recognised and pooled over H, W.
    layout: the model's CLS/register tokens; seq_first / channels_last: ids of modules whose
    outputs are [T, B, D] / [B, H, W, C]; features: layer -> SAE whose latents replace that layer's units.
    Layer paths are validated at construction (UnknownLayerError lists close
    names), so a typo fails before any image is processed.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str], pooling: str = "avg",
                 token_pooling: str = "cls", model_name: str | None = None,
                 layout: TokenLayout = DEFAULT_LAYOUT, seq_first: Collection[int] = (),
                 channels_last: Collection[int] = (),
                 features: Mapping[str, SparseAutoencoder] | None = None) -> None:
        check_pooling(pooling, token_pooling)
        names = list(dict.fromkeys(l.strip() for l in layers))
        if not names:
            raise ValueError("no layers requested; name at least one, e.g. 'layer4'")
        self.model = model
        self.layers = names
        self.pooling = pooling
        self.token_pooling = token_pooling
        self.modules = {name: resolve_layer(model, name, model_name) for name in names}
        nhwc = channels_last_modules(model) | set(channels_last)
        self.channels_last = {name for name, module in self.modules.items() if id(module) in nhwc}
        self.seq_first = {name for name, module in self.modules.items() if id(module) in set(seq_first)}
        self.layout = layout
        self.features = dict(features or {})
        unknown = sorted(set(self.features) - set(names))
        if unknown:
            raise ValueError(f"features are given for {', '.join(unknown)}, which is not a recorded layer")
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._outputs: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            self._calls[name] = self._calls.get(name, 0) + 1
            if self._calls[name] > 1:
                return  # refused after the forward pass (see _check_single_calls)
            tensor = first_tensor(output, layer=name)
            if name in self.features:
                x = standard_layout(tensor, name in self.channels_last, name in self.seq_first)
                rows, reduce = positions(x, self.pooling, self.token_pooling, self.layout, name)
                self._outputs[name] = encode_pooled(self.features[name], rows, reduce)
                return
            self._outputs[name] = pool(tensor, self.pooling, self.token_pooling, layer=name,
                                       channels_last=name in self.channels_last, layout=self.layout,
                                       seq_first=name in self.seq_first)
        return hook

    def attach(self) -> "LayerRecorder":
        """Register the hooks (idempotent)."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "LayerRecorder":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @torch.no_grad()
    def record(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass over `images` [B, 3, H, W]; {layer: float32 Tensor[B, units]} on the device.

        The images are moved to the model's device. Works inside or outside a `with` block.
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"record expects a batch of images [B, 3, H, W]; got {shape}")
        param = next(self.model.parameters(), None)
        if param is not None:
            images = images.to(device=param.device, dtype=param.dtype if param.is_floating_point() else images.dtype,
                               non_blocking=True)
        attached_here = not self._handles
        self.attach()
        self._outputs, self._calls = {}, {}
        try:
            self.model(images)
        finally:
            if attached_here:
                self.detach()
        self._check_single_calls()
        missing = [n for n in self.layers if n not in self._outputs]
        if missing:
            raise RuntimeError(
                f"layers {', '.join(missing)} were not called during the forward pass (unused "
                f"submodules); choose layers on the model's forward path"
            )
        out, self._outputs = {n: self._outputs[n] for n in self.layers}, {}
        return out

    __call__ = record

    def _check_single_calls(self) -> None:
        """Refuse modules that ran several times in the forward pass (e.g. the one ``relu`` a
        torchvision ResNet block applies after each of its convolutions): a hook sees each call,
        and keeping any one of them would silently label something other than what was asked."""
        repeated = {name: n for name, n in self._calls.items() if n > 1}
        if not repeated:
            return
        name, count = next(iter(repeated.items()))
        module = self.modules[name]
        full = next(n for n, m in self.model.named_modules() if m is module)
        parent = full.rsplit(".", 1)[0] if "." in full else ""
        options = [f"its parent {display_name(parent)!r} (the output of the whole block)"] if parent else []
        siblings = [display_name(f"{parent}.{child}" if parent else child)
                    for child, sibling in self.model.get_submodule(parent).named_children() if sibling is not module]
        if siblings:
            options.append(f"a module that runs once, such as {', '.join(repr(s) for s in siblings[:3])}")
        raise RepeatedLayerError(
            f"layer {name!r} runs {count} times in one forward pass (the module is reused, as ResNet blocks "
            f"reuse their relu), so it has no single output to record; choose "
            + (" or ".join(options) if options else "another layer") + " instead (`cdissect layers MODEL` lists the "
            "modules)")
