"""Feature taps of any `nn.Module`, read with forward hooks: what lets a distiller use a model outside the zoo.

A zoo model (`FeatureModel`) computes its own `Features`. Any other module (a timm or torchvision model, your
own) gets a `TapReader`, attached to the module with `attach_taps(model, image_size, taps=None)` and kept in
its `__dict__`, outside its submodules: the model's state dict, parameters and `forward` stay its own, so its
weights load from, and save to, the files of its own library. `feature_info(model)` and
`forward_features(model, x)` read either kind.

Where the taps are. One probe forward (eval mode, no autograd, a batch of one `image_size` x `image_size` image)
with hooks on every module records what each module call takes and gives. Then:
  - `taps=[...]` names them: module paths (`"layer1"`, `"blocks.5"`), each tap the module's output;
  - else, for a timm model, the candidates are the modules of its `feature_info` (those `forward_intermediates`
    returns); for any other model, at each spatial resolution the map that crosses into the next one: the
    input of the first module call that takes a map at that resolution and gives a smaller map or a vector
    (a strided stage, a pooling), named by the outermost module that output that very tensor. So a
    torchvision ResNet's taps are `layer1` .. `layer4`, not the 1x1 convolution that opens `layer2`'s first
    bottleneck. A model with one resolution only (a ViT) has as candidates the longest run of sibling
    blocks giving token sequences of one shape;
  - of the candidates, with two resolutions or more, the last at each resolution, the deepest `MAX_TAPS`;
    with one, `MAX_TAPS` evenly spaced ones ending with the last (blocks 2, 5, 8, 11 of a 12-block ViT).
Maps are read as NCHW; a timm tap whose output holds its channels last (Swin) is permuted, and a token
sequence (B, T, C) becomes a (B, C, g, g) map of its last g * g tokens (the class and register tokens dropped),
as timm's `forward_intermediates(output_fmt="NCHW")` gives it.

The pooled vector is the input of the classifier: the last `nn.Linear` call whose output is the model's
output, which is the logits. A tap's pre-activation is the input of the activation module (ReLU, GELU, ...)
that gives the tap's output, where one does (a ResNet stage); where none does (a ConvNeXt or ViT block ends with
a residual sum, a MobileNet block with a linear bottleneck), the output is itself the map before any activation
and the model `has_preact` only if some tap differs. An activation applied as a function (`F.relu`) is not seen.

Hooks are registered on the tapped modules only; modules swapped in later (e.g. by
`nn.SyncBatchNorm.convert_sync_batchnorm`) are not seen: swap first.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from famkd.errors import ConfigError
from famkd.models.features import FeatureInfo, FeatureModel, Features, StageInfo
from famkd.registry import closest

MAX_TAPS = 4
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish)
_READER = "_famkd_tap_reader"  # key of the attached reader in the model's __dict__
NCHW, NHWC, TOKENS = "NCHW", "NHWC", "tokens"


@dataclass(frozen=True)
class Capture:
    """One tensor a forward pass hands to a module call: the `call`-th call (from 0) of the module at `path`,
    its input or its output; `clone`: copied when taken, as the forward changes it in place later (the input of
    an in-place ReLU, a map a residual sum is added to)."""

    path: str
    call: int = 0
    kind: str = "output"
    clone: bool = False


@dataclass(frozen=True)
class Tap:
    """A feature tap: where its map is read, where its pre-activation is (None: the map itself), its layout."""

    name: str
    map: Capture
    preact: Capture | None
    channels: int
    side: int  # of the map, for the probe's image size
    layout: str = NCHW


@dataclass
class Call:
    """One module call seen by the probe, in the order the calls started."""

    path: str
    index: int  # this module's index-th call
    module: nn.Module
    input: Any = None
    output: Any = None
    finished: int = -1  # when the call returned, counted over all calls
    versions: tuple[int, int] = (-1, -1)  # of the input when the call started, of the output when it returned
    changed: tuple[bool, bool] = (False, False)  # whether the input, the output was later changed in place


@dataclass
class Probe:
    """Every module call of one forward pass, and the model's input and output."""

    calls: list[Call] = field(default_factory=list)
    image: Tensor | None = None
    output: Any = None


def attach_taps(model: nn.Module, image_size: int, taps: Sequence[str] | None = None, label: str = "") -> TapReader:
    """Find `model`'s taps (see the module docstring) for `image_size` inputs and attach a reader of them.

    `label` names the model in errors (e.g. "timm:convnext_atto"; its class name by default). A model that
    already has a reader gets a new one (its hooks replace the old ones).
    """
    detach_taps(model)
    label = label or type(model).__name__
    probe = run_probe(model, image_size)
    classifier = classifier_call(probe, label)
    planned = plan_taps(model, probe, taps, label)
    info = FeatureInfo(
        stages=tuple(StageInfo(tap.name, tap.channels, stride_of(tap, image_size, label)) for tap in planned),
        pooled_channels=classifier.input.shape[1],
    )
    reader = TapReader(model, planned, Capture(classifier.path, classifier.index, "input"), info, label)
    model.__dict__[_READER] = reader
    return reader


def stride_of(tap: Tap, image_size: int, label: str) -> int:
    """The stride s with ceil(image_size / s) equal to the tap's side (famkd.models.features.StageInfo)."""
    stride = math.ceil(image_size / tap.side)
    if math.ceil(image_size / stride) != tap.side:
        raise ConfigError(
            f"{label}: tap {tap.name!r} has side {tap.side} for {image_size}-pixel images, which no whole stride "
            "gives; use an image size divisible by the model's total stride"
        )
    return stride


def detach_taps(model: nn.Module) -> None:
    reader = model.__dict__.pop(_READER, None)
    if reader is not None:
        reader.remove_hooks()


def refresh_taps(model: nn.Module) -> None:
    """Hook the taps again on the modules now at their paths (after modules were swapped, e.g. by
    `convert_sync_batchnorm`)."""
    reader = tap_reader(model)
    if reader is not None:
        reader.remove_hooks()
        reader.hook(model)


def tap_reader(model: nn.Module) -> TapReader | None:
    return model.__dict__.get(_READER)


def feature_info(model: nn.Module) -> FeatureInfo:
    """The taps of a zoo model or of a model with attached taps."""
    reader = tap_reader(model)
    if reader is not None:
        return reader.info
    return _feature_model(model).feature_info


def forward_features(model: nn.Module, images: Tensor) -> Features:
    """Every tap of one forward pass of a zoo model or of a model with attached taps."""
    reader = tap_reader(model)
    if reader is not None:
        return reader(images)
    return _feature_model(model).forward_features(images)


def has_preact(model: nn.Module) -> bool:
    """Whether some tap's pre-activation map differs from the map (always for the zoo's models)."""
    reader = tap_reader(model)
    return reader is None or any(tap.preact is not None for tap in reader.taps)


def _feature_model(model: nn.Module) -> FeatureModel:
    if not isinstance(model, FeatureModel):
        raise TypeError(
            f"{type(model).__name__} has no feature taps: attach them with famkd.models.attach_taps(model, image_size) "
            "(famkd.distill.create_distiller does so)"
        )
    return model


class TapReader:
    """Reads a model's taps: `reader(images)` runs the model once and returns its `Features`."""

    def __init__(self, model: nn.Module, taps: list[Tap], classifier: Capture, info: FeatureInfo, label: str):
        self.taps = taps
        self.classifier = classifier
        self.info = info
        self.label = label
        self.captures = [tap.map for tap in taps] + [tap.preact for tap in taps if tap.preact] + [classifier]
        self._store: dict[Capture, Tensor] | None = None
        self._counts: dict[tuple[str, str], int] = {}
        self._model = model
        self._handles: list[Any] = []
        self.hook(model)

    def __deepcopy__(self, memo: dict) -> None:
        """A copy of the model has no taps (its hooks would still call this reader): attach them to it again."""
        return None

    def __call__(self, images: Tensor) -> Features:
        self._store, self._counts = {}, {}
        try:
            logits = self._model(images)
            store = self._store
        finally:
            self._store = None
        missing = [capture.path for capture in self.captures if capture not in store]
        if missing:
            raise RuntimeError(
                f"{self.label}: the forward pass did not reach the tapped module call(s) {', '.join(missing)}; if "
                "modules were swapped since the taps were attached, call famkd.models.taps.refresh_taps(model)"
            )
        stages = [as_nchw(store[tap.map], tap) for tap in self.taps]
        preact = [as_nchw(store[tap.preact], tap) if tap.preact else stage for tap, stage in zip(self.taps, stages)]
        return Features(stages=stages, preact=preact, pooled=store[self.classifier], logits=logits)

    def remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def hook(self, model: nn.Module) -> None:
        """Register the hooks that take the captures on `model`'s modules."""
        by_module: dict[str, list[Capture]] = {}
        for capture in self.captures:
            by_module.setdefault(capture.path, []).append(capture)
        for path, captures in by_module.items():
            module = model.get_submodule(path)
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(path, captures)))
            self._handles.append(module.register_forward_hook(self._post_hook(path, captures)))

    def _count(self, path: str, kind: str) -> int:
        key = (path, kind)
        index = self._counts.get(key, 0)
        self._counts[key] = index + 1
        return index

    def _take(self, captures: list[Capture], kind: str, index: int, value: Any) -> None:
        assert self._store is not None
        for capture in captures:
            if capture.kind == kind and capture.call == index:
                self._store[capture] = value.clone() if capture.clone else value

    def _pre_hook(self, path: str, captures: list[Capture]):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if self._store is not None:
                self._take(captures, "input", self._count(path, "input"), args[0])

        return hook

    def _post_hook(self, path: str, captures: list[Capture]):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._store is not None:
                self._take(captures, "output", self._count(path, "output"), output)

        return hook


def as_nchw(value: Tensor, tap: Tap) -> Tensor:
    """A tap's captured tensor as an NCHW map (see the module docstring)."""
    if tap.layout == NHWC:
        return value.permute(0, 3, 1, 2)
    if tap.layout == TOKENS:
        batch, tokens, channels = value.shape
        grid = value[:, tokens - tap.side * tap.side :]
        return grid.transpose(1, 2).reshape(batch, channels, tap.side, tap.side)
    return value


@torch.no_grad()
def run_probe(model: nn.Module, image_size: int) -> Probe:
    """One eval-mode forward of a random image with every module call recorded (training flags put back)."""
    probe = Probe()
    counts: dict[str, int] = {}
    finished = iter(range(1 << 62))
    handles = []

    def record_start(path: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            index = counts.get(path, 0)
            counts[path] = index + 1
            probe.calls.append(Call(path, index, module, args[0] if args else None, versions=(_version(args), -1)))

        return hook

    def record_end(path: str):
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            call = next(c for c in reversed(probe.calls) if c.module is module and c.finished < 0)
            call.output, call.finished = output, next(finished)
            call.versions = (call.versions[0], _version((output,)))

        return hook

    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_pre_hook(record_start(path)))
            handles.append(module.register_forward_hook(record_end(path)))
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.float32
    image = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0), dtype=dtype)
    probe.image = image.to(device)
    with training_mode(model, False):
        try:
            probe.output = model(probe.image)
        finally:
            for handle in handles:
                handle.remove()
    for call in probe.calls:
        call.changed = (_version((call.input,)) != call.versions[0], _version((call.output,)) != call.versions[1])
    return probe


def _version(values: tuple[Any, ...]) -> int:
    """The in-place version counter of the first of `values` when it is a tensor (-1 otherwise)."""
    return values[0]._version if values and isinstance(values[0], Tensor) else -1


@contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Set every module's training flag to `training`, and put each module's own flag back after."""
    modes = {module: module.training for module in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def classifier_call(probe: Probe, label: str) -> Call:
    """The last nn.Linear call whose output is the model's output (the logits), taking a (batch, channels) vector."""
    output = probe.output
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise ConfigError(
            f"{label}: its forward returns {describe(output)}, not logits of shape (batch, classes); famkd distils "
            "classifiers whose forward gives one logits tensor"
        )
    for call in sorted(probe.calls, key=lambda c: -c.finished):
        if isinstance(call.module, nn.Linear) and call.output is output and _is_vector(call.input):
            return call
    raise ConfigError(
        f"{label}: its logits are not the output of an nn.Linear classifier taking a (batch, channels) vector, "
        "so famkd cannot find its pooled vector"
    )


def plan_taps(model: nn.Module, probe: Probe, paths: Sequence[str] | None, label: str) -> list[Tap]:
    """The taps of the module docstring, shallow to deep."""
    if paths:
        taps = [named_tap(model, probe, path, label) for path in paths]
    else:
        timm_info = getattr(model, "feature_info", None)
        if isinstance(timm_info, list) and timm_info and isinstance(timm_info[0], dict):
            candidates = [named_tap(model, probe, entry["module"], label, entry["num_chs"]) for entry in timm_info]
        else:
            candidates = crossing_taps(probe)
            if len({tap.side for tap in candidates}) < 2:
                candidates = token_block_taps(probe) or candidates
        taps = select_taps(candidates)
    if not taps:
        raise ConfigError(
            f"{label}: found no spatial feature maps (no module gives a (B, C, H, W) map or (B, tokens, C) sequence "
            "before the classifier); a distiller needs them: name them with taps=[module paths]"
        )
    return taps


def select_taps(candidates: list[Tap]) -> list[Tap]:
    """The last candidate at each resolution, the deepest MAX_TAPS; or, all at one resolution, MAX_TAPS evenly
    spaced ones ending with the last."""
    sides = list(dict.fromkeys(tap.side for tap in candidates))
    if len(sides) >= 2:
        last = {tap.side: tap for tap in candidates}
        return [last[side] for side in sides][-MAX_TAPS:]
    count = min(MAX_TAPS, len(candidates))
    return [candidates[round((i + 1) * len(candidates) / count) - 1] for i in range(count)]


def named_tap(model: nn.Module, probe: Probe, path: str, label: str, channels: int | None = None) -> Tap:
    """The tap at the output of the module at `path` (its last call); `channels` (timm's) tells the layout."""
    calls = [call for call in probe.calls if call.path == path]
    if not calls:
        names = [name for name, _ in model.named_modules() if name]
        near = closest(path, names)
        hint = f" (did you mean {near!r}?)" if near else ""
        what = "is not a module of the model" if path not in names else "is not called by its forward"
        raise ConfigError(f"{label}: tap {path!r} {what}{hint}")
    call = calls[-1]
    output = call.output
    layout = tensor_layout(output, channels)
    if layout is None:
        raise ConfigError(
            f"{label}: tap {path!r} gives {describe(output)}, not a (B, C, H, W) map or a (B, tokens, C) sequence"
        )
    side = token_grid_side(output.shape[1]) if layout == TOKENS else output.shape[2 if layout == NCHW else 1]
    chans = output.shape[-1] if layout in (NHWC, TOKENS) else output.shape[1]
    capture = Capture(path, call.index, clone=call.changed[1])
    return Tap(path, capture, preact_capture(probe, call), chans, side, layout)


def tensor_layout(value: Any, channels: int | None) -> str | None:
    if not isinstance(value, Tensor):
        return None
    if value.dim() == 3:
        return TOKENS
    if value.dim() != 4:
        return None
    if channels is not None and value.shape[1] != channels and value.shape[3] == channels:
        return NHWC
    return NCHW


def token_grid_side(tokens: int) -> int:
    """g, where the last g * g of `tokens` tokens are the patch grid (the rest: class and register tokens)."""
    return math.isqrt(tokens)


def preact_capture(probe: Probe, call: Call) -> Capture | None:
    """The input of the activation call that gives `call`'s output, if one does (see the module docstring)."""
    inside = [
        c
        for c in probe.calls
        if (c.path == call.path or c.path.startswith(call.path + "."))
        and 0 <= c.finished <= call.finished
        and isinstance(c.module, ACTIVATIONS)
    ]
    if not inside:
        return None
    last = max(inside, key=lambda c: c.finished)
    if last.output is not call.output:
        return None
    return Capture(last.path, last.index, "input", clone=last.changed[0])


def crossing_taps(probe: Probe) -> list[Tap]:
    """At each resolution but the input's, the map crossing into a smaller one (see the module docstring):
    the input of the first call reducing a map at that side (a global pool excepted: a squeeze-excitation
    pools inside a block); at the deepest side, the input of the last global pool (the classifier's), or where
    the model pools with a function, the last map a module gives."""
    taps: dict[int, Tap] = {}
    pools = [call for call in probe.calls if _is_global_pool(call) and call.input is not probe.image]
    for call in probe.calls:
        source = call.input
        if not _is_map(source) or source is probe.image or source.shape[2] in taps or call in pools:
            continue
        if _is_map(call.output) and call.output.shape[2] < source.shape[2]:
            taps[source.shape[2]] = tap_of_tensor(probe, source, call)
    if pools:
        taps[pools[-1].input.shape[2]] = tap_of_tensor(probe, pools[-1].input, pools[-1])
    else:
        maps = [call for call in probe.calls if _is_map(call.output) and call.output is not probe.image]
        if maps:
            last = max(maps, key=lambda c: c.finished)
            taps[last.output.shape[2]] = tap_of_tensor(probe, last.output, last)
    return sorted(taps.values(), key=lambda tap: -tap.side)


def _is_global_pool(call: Call) -> bool:
    """An adaptive pooling module taking a map, or a call reducing a map wider than 1 x 1 to a vector."""
    if not _is_map(call.input):
        return False
    adaptive = isinstance(call.module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d))
    return adaptive or (_is_vector(call.output) and call.input.shape[2] > 1)


def tap_of_tensor(probe: Probe, tensor: Tensor, consumer: Call) -> Tap:
    """The tap reading `tensor`: the output of the outermost module call giving it (the last such call among
    equals), else the input of `consumer`, the call that reads it."""
    producers = [call for call in probe.calls if call.output is tensor]
    channels, side = tensor.shape[1], tensor.shape[2]
    if not producers:
        name = f"{consumer.path}:input"
        capture = Capture(consumer.path, consumer.index, "input", clone=consumer.changed[0])
        return Tap(name, capture, None, channels, side)
    call = min(producers, key=lambda c: (c.path.count("."), -c.finished))
    name = call.path if call.index == 0 else f"{call.path}#{call.index}"
    return Tap(name, Capture(call.path, call.index, clone=call.changed[1]), preact_capture(probe, call), channels, side)


def token_block_taps(probe: Probe) -> list[Tap]:
    """The longest run of consecutive sibling calls of one module class giving token sequences (B, T, C) of one
    shape: a ViT's blocks."""
    best: list[Call] = []
    siblings: dict[str, list[Call]] = {}
    for call in probe.calls:
        siblings.setdefault(call.path.rpartition(".")[0], []).append(call)
    for calls in siblings.values():
        run: list[Call] = []
        for call in calls:
            fits = _is_tokens(call.output) and call.index == 0
            same = run and type(run[-1].module) is type(call.module) and run[-1].output.shape == call.output.shape
            run = run + [call] if fits and same else [call] if fits else []
            best = max(best, run, key=len)
    if len(best) < 2:
        return []
    return [
        Tap(c.path, Capture(c.path), None, c.output.shape[2], token_grid_side(c.output.shape[1]), TOKENS) for c in best
    ]


def describe(value: Any) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _is_map(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 4


def _is_vector(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 2


def _is_tokens(value: Any) -> bool:
    return isinstance(value, Tensor) and value.dim() == 3
