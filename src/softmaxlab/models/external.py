"""Models that softmaxlab did not write: library classifiers by name and the user's own factories.

* :func:`create_library_model` builds ``timm:<name>`` (any name ``timm.create_model`` knows)
  or ``torchvision:<name>`` (any classifier of ``torchvision.models.get_model``) as the
  library has it, its own classifier included; optionally with the library's pretrained
  weights (its own downloader) or a local weights file.
* :func:`load_factory` imports a user's factory from ``path/to/file.py:factory`` (the file is
  run as Python runs a script: its folder goes first on ``sys.path``) or from
  ``package.module:factory``; :func:`call_factory` calls it with keyword arguments and checks
  that it returns an ``nn.Module``.
* :func:`load_weights_file` / :func:`load_weights_into` read a state dict (``.safetensors``,
  or a torch file loaded with ``weights_only=True``) and load it, with one-line errors.

Every failure caused by the name, the file, the arguments or a missing network is a
:class:`~softmaxlab.errors.UserError` of one line. A factory file, ten lines::

    # my_net.py: softmaxlab run --set model.name=my_net.py:make --set model.kwargs.width=32
    from torch import nn


    def make(width: int = 16) -> nn.Module:
        net = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        net.out_features = width  # features (B, width); without it a forward on an example measures them
        net.blocks = [net[2]]  # optional: the stages that diagnostics, feature maps and softmax_blocks address
        return net

This module is what :mod:`softmaxlab.models.families` builds the ``model.name`` families on,
and what ``softmaxlab lint`` uses to build the model it checks.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import pickle
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from softmaxlab.errors import UserError, short_error
from softmaxlab.runs import load_state_checked
from softmaxlab.untrusted import regular_file

#: The libraries whose models ``model.name`` reaches by a prefix: ``timm:resnet18``.
LIBRARIES = ("timm", "torchvision")

#: Refusal of ``model.pretrained: true`` together with ``model.weights`` (config and API).
BOTH_WEIGHTS = "model.pretrained and model.weights both ask for weights; keep one of them"

_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


# --------------------------------------------------------------------------- library names


def split_library_name(name: str) -> tuple[str, str]:
    """``"timm:resnet18"`` -> ``("timm", "resnet18")``; a UserError for another prefix or none."""
    library, sep, arch = name.partition(":")
    if not sep or library not in LIBRARIES or not arch.strip():
        raise UserError(
            f"{name!r} is not a library model name; write timm:<name> (timm.list_models()) or "
            "torchvision:<name> (torchvision.models.list_models())"
        )
    return library, arch.strip()


def library_names(library: str) -> list[str]:
    """Every model name of ``library`` (timm's architectures; torchvision's classifiers)."""
    if library == "timm":
        import timm

        return timm.list_models()
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def is_library_model(library: str, arch: str) -> bool:
    """Whether ``library`` builds ``arch`` (for timm, with or without a pretrained tag: ``resnet18.a1_in1k``)."""
    if library == "timm":
        import timm

        return timm.is_model(arch)
    return arch in library_names("torchvision")


def check_library_name(name: str) -> tuple[str, str]:
    """(library, architecture) of ``name``; a UserError with the closest names when the library lacks it."""
    library, arch = split_library_name(name)
    if is_library_model(library, arch):
        return library, arch
    close = difflib.get_close_matches(arch, library_names(library), n=3, cutoff=0.6)
    other = next(o for o in LIBRARIES if o != library)
    if not close and arch in library_names(other):  # the other library has it
        close = [f"{other}:{arch}"]
    close = [c if ":" in c else f"{library}:{c}" for c in close]
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    listing = "timm.list_models()" if library == "timm" else "torchvision.models.list_models(module=torchvision.models)"
    raise UserError(f"{library} has no model {arch!r}{hint}; see {listing} for the names")


def construct_library_model(
    name: str,
    pretrained: bool,
    kwargs: Mapping[str, Any],
    own: Mapping[str, Any] | None = None,
    option: str = "model.kwargs",
) -> nn.Module:
    """``timm.create_model(arch, pretrained=..., **kwargs, **own)`` or ``torchvision.models.get_model(arch,
    weights="DEFAULT" if pretrained else None, **kwargs, **own)``; ``own`` are the arguments softmaxlab
    sets itself (``num_classes=0``), left out of the messages; ``option`` is where ``kwargs`` came from
    (``softmaxlab lint --kwarg``), named in the hint when the model refuses them.

    Raises:
        UserError: an unknown name; keyword arguments the model refuses; pretrained weights
            that cannot be downloaded (no network, found out at once where timm would retry for
            a minute: :func:`_check_hub_reachable`): download them elsewhere and pass the file.
    """
    library, arch = check_library_name(name)
    if library == "timm":
        cfg = _check_timm_weights(arch, pretrained)
        if pretrained:
            _check_hub_reachable(name, cfg, kwargs.get("cache_dir"))
    arguments = {**kwargs, **(own or {})}
    try:
        return _construct_off_meta(library, arch, pretrained, arguments)
    except torch.OutOfMemoryError:
        raise
    except OSError as exc:  # URLError, ConnectionError, huggingface_hub's LocalEntryNotFoundError: no network
        if not pretrained:
            raise
        raise _download_error(name, exc) from None
    except (TypeError, ValueError, AssertionError, KeyError, RuntimeError, NotImplementedError) as exc:
        raise UserError(
            f"cannot build {name!r} with kwargs {dict(kwargs)} ({short_error(exc)}); check {option}"
        ) from None


def _construct(library: str, arch: str, pretrained: bool, arguments: Mapping[str, Any]) -> nn.Module:
    """The library's own constructor call."""
    if library == "timm":
        import timm

        return timm.create_model(arch, pretrained=pretrained, **arguments)
    import torchvision

    return torchvision.models.get_model(arch, weights="DEFAULT" if pretrained else None, **arguments)


def _construct_off_meta(library: str, arch: str, pretrained: bool, arguments: Mapping[str, Any]) -> nn.Module:
    """:func:`_construct`; on the meta device (where softmaxlab counts parameters before it
    builds), a model whose constructor computes with tensors (torchvision's RegNet widths:
    ``.tolist()`` of a meta tensor fails) is built on the CPU instead, where the values exist."""
    try:
        return _construct(library, arch, pretrained, arguments)
    except NotImplementedError as exc:
        if torch.get_default_device().type != "meta" or "meta" not in str(exc):
            raise
    with torch.device("cpu"):
        return _construct(library, arch, pretrained, arguments)


def _download_error(name: str, exc: BaseException) -> UserError:
    """The one-line refusal of ``model.pretrained`` without a network: use a local ``model.weights``."""
    return UserError(
        f"cannot download the pretrained weights of {name!r} ({short_error(exc)}); download them where there is a "
        f"network (torch.save of the model's state_dict(), or its .safetensors file) and set model.weights: "
        "PATH instead of model.pretrained"
    )


def _check_timm_weights(arch: str, pretrained: bool) -> Any:
    """timm's pretrained config of ``arch`` (None when neither a tag nor ``pretrained`` asks for
    one); a UserError for a pretrained tag timm lacks (``resnet18.nope``), or ``pretrained`` for
    an architecture without weights (timm would log a warning and go on with random weights)."""
    from timm.models import get_pretrained_cfg

    base, _, tag = arch.partition(".")
    try:
        cfg = get_pretrained_cfg(arch) if tag or pretrained else None
    except RuntimeError:
        raise UserError(
            f"timm has no weights {tag!r} for {base!r}; timm.list_models({base!r}, pretrained=True) lists its tags"
        ) from None
    if pretrained and not (cfg is not None and (cfg.url or cfg.hf_hub_id or cfg.file)):
        raise UserError(
            f"timm has no pretrained weights for {arch!r}; set model.pretrained: false, or choose one of "
            "timm.list_models(pretrained=True)"
        )
    return cfg


#: The files timm asks the Hugging Face Hub for, by the file its config names (it tries the
#: safetensors alternative first, as ``timm.models._hub.load_state_dict_from_hf`` does).
_HUB_FILES = {
    "pytorch_model.bin": ("model.safetensors", "pytorch_model.bin"),
    "open_clip_pytorch_model.bin": ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
}


def _check_hub_reachable(name: str, cfg: Any, cache_dir: str | None) -> None:
    """A UserError at once where timm would download ``name``'s weights from the Hugging Face
    Hub and the hub cannot be reached: without a network, huggingface_hub retries a file it
    lacks for about a minute before it gives up.

    Nothing is asked when the weights do not come from the hub (a URL fails at once), when
    they are in the local cache (timm then loads them offline), or under ``HF_HUB_OFFLINE=1``
    (the hub then fails at once itself). Otherwise one HEAD request without retries, within
    the hub's own ``HF_HUB_ETAG_TIMEOUT`` (10 s by default), tells: any HTTP answer (a 404 of
    one file name included) means the hub is there and timm goes on. No global state changes.
    """
    if cfg is None or not cfg.hf_hub_id or cfg.file or cfg.state_dict or cfg.source == "local-dir":
        return
    try:
        import huggingface_hub
        from huggingface_hub import constants
        from huggingface_hub.errors import HfHubHTTPError
    except ImportError:  # timm then takes the URL of its config
        return
    if getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)():  # read at each call since 1.0
        return
    repo, _, tag = cfg.hf_hub_id.partition("@")
    revision = tag or None
    files = _HUB_FILES.get(cfg.hf_hub_filename or "pytorch_model.bin", (cfg.hf_hub_filename,))
    for file in files:
        if isinstance(huggingface_hub.try_to_load_from_cache(repo, file, cache_dir=cache_dir, revision=revision), str):
            return
    try:
        url = huggingface_hub.hf_hub_url(repo, files[0], revision=revision)
        huggingface_hub.get_hf_file_metadata(url, timeout=constants.HF_HUB_ETAG_TIMEOUT)
    except HfHubHTTPError:  # the hub answered: timm says the rest
        return
    except Exception as exc:  # httpx's ConnectError, a timeout, a proxy that refuses: no hub
        raise _download_error(name, exc) from None


def create_library_model(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    kwargs: dict | None = None,
    option: str = "model.kwargs",
) -> nn.Module:
    """The library classifier ``name`` (``timm:<name>`` or ``torchvision:<name>``) as the library
    builds it, its own classifier included (what ``softmaxlab lint`` checks).

    Args:
        name: ``timm:<name>`` (``timm.list_models()``) or ``torchvision:<name>``
            (``torchvision.models.list_models(module=torchvision.models)``).
        pretrained: the library's pretrained weights, through its own downloader (timm:
            ``pretrained=True``; torchvision: ``weights="DEFAULT"``).
        weights: a local state dict instead (``.safetensors``, or a torch file read with
            ``weights_only=True``); its keys must fit the model.
        kwargs: keyword arguments of the library's constructor (``num_classes``, ``drop_rate``, ...).

    Raises:
        UserError: an unknown name (with the closest ones), refused keyword arguments, a
            failed download, an unreadable weights file or one that does not fit.
    """
    if pretrained and weights is not None:
        raise UserError(BOTH_WEIGHTS)
    model = construct_library_model(name, pretrained, dict(kwargs or {}), option=option)
    if weights is not None:
        load_weights_into(model, load_weights_file(weights), f"model.weights {weights!r}")
    return model


# --------------------------------------------------------------------------- outputs

#: How many entries of a tuple or dict output a message describes.
_SHOWN = 6


def select_output(
    output: Any, choice: int | str | None, *, model: str = "the model", option: str = "model.output"
) -> Tensor:
    """The tensor that ``choice`` (``model.output``) names in a model's ``output``.

    * A tensor is the answer itself, whatever ``choice``: it is never indexed (``output[0]``
      would be the first image), and a model may return extras only in training (torchvision's
      GoogLeNet with ``aux_logits``) and one tensor in evaluation.
    * A tuple or list: ``output[choice]`` for an int (a negative one counts from the end); a
      named tuple also by field name (``logits``).
    * A mapping (a dict, Hugging Face's ``ModelOutput``): ``output[choice]`` for a str key.

    ``model`` names the model in the messages, ``option`` the setting that chooses
    (``softmaxlab lint --output``).

    >>> select_output((torch.ones(2, 3), torch.zeros(2)), 0).shape
    torch.Size([2, 3])
    >>> select_output({"logits": torch.ones(2, 4), "features": torch.ones(2, 8)}, "features").shape
    torch.Size([2, 8])

    Raises:
        UserError: a tuple or mapping without ``choice`` (the message lists the choices and
            names ``model.output``), a choice it lacks or that picks no tensor, or an output
            that is neither a tensor, a tuple, a list nor a mapping.
    """
    if isinstance(output, Tensor):
        return output
    if not isinstance(output, (tuple, list, Mapping)):
        raise UserError(
            f"{model} outputs a {type(output).__name__}, not a tensor, a tuple or a dict; return the tensor from "
            "its forward"
        )
    if isinstance(output, Mapping) and choice is not None:
        found = output.get(choice, _MISSING)
    elif isinstance(choice, int):
        found = output[choice] if -len(output) <= choice < len(output) else _MISSING
    elif choice is not None:  # a named tuple's field
        found = dict(_output_entries(output)).get(choice, _MISSING)
    if choice is not None and isinstance(found, Tensor):
        return found  # every training step of a tuple or dict output: no message is built
    entries = _output_entries(output)
    tensors = [str(k) for k, v in entries[:_SHOWN] if isinstance(v, Tensor)]
    flag = option.startswith("-")  # a command-line option (`--output 0`) or a config key (`model.output: 0`)
    hint = f"{option}{' ' if flag else ': '}{_or(tensors)}" if tensors else "a forward that returns a tensor"
    if choice is None:
        raise UserError(f"{model} outputs {_describe(output, entries)}; choose the tensor to use with {hint}")
    what = "has no such entry" if found is _MISSING else f"has a {type(found).__name__} there, not a tensor"
    given = f"{option} {choice}" if flag else f"{option}={choice!r}"
    raise UserError(f"{given}: the output of {model} {what} ({_describe(output, entries)}); set {hint}")


_MISSING = object()


def _output_entries(output: tuple | list | Mapping) -> list[tuple[int | str, Any]]:
    """(choice, value) of each entry, as the messages name them: a mapping's keys, a named
    tuple's field names (its indices work too), a sequence's indices."""
    if isinstance(output, Mapping):
        return list(output.items())
    fields = getattr(output, "_fields", None)
    return list(zip(fields, output, strict=True)) if fields else list(enumerate(output))


def _describe(output: tuple | list | Mapping, entries: list[tuple[int | str, Any]]) -> str:
    """``a tuple of 2: 0 (2, 10), 1 (2, 3)``; ``a dict of 2: logits (2, 10), features (2, 16)``."""
    parts = [f"{k} {tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}" for k, v in entries[:_SHOWN]]
    more = ", ..." if len(entries) > _SHOWN else ""
    kind = type(output).__name__ if hasattr(output, "_fields") else f"a {type(output).__name__}"
    return f"{kind} of {len(entries)}: {', '.join(parts)}{more}"


def _or(items: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


# --------------------------------------------------------------------------- weights files


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """The state dict in ``path``: a ``.safetensors`` file, or a torch file loaded with
    ``weights_only=True`` holding a state dict or a checkpoint with one under ``state_dict``,
    ``model_state_dict`` or ``model`` (a ``module.`` prefix of DistributedDataParallel is removed).

    Raises:
        UserError: not a regular file; unreadable or corrupt; a pickle payload with code or
            objects other than tensors (refused, never executed); no state dict inside.
    """
    hint = "pass a state dict saved with torch.save(model.state_dict(), PATH) or a .safetensors file"
    p = regular_file(path, "model.weights", hint)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(p)
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        foreign = "global" in str(exc).lower()
        why = "holds code or objects other than tensors and was not loaded" if foreign else "is not a torch file"
        raise UserError(f"model.weights {str(p)!r} {why}; {hint}") from None
    except Exception as exc:  # truncated or corrupt, whatever the loader calls it
        raise UserError(f"model.weights {str(p)!r} cannot be read ({short_error(exc)}); {hint}") from None
    return _state_dict_of(state, p, hint)


def _state_dict_of(payload: Any, path: Path, hint: str) -> dict[str, Tensor]:
    """The {name: tensor} mapping in a loaded payload (unwrapping the usual checkpoint keys)."""
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(payload, dict) and isinstance(payload.get(key), dict):
            payload = payload[key]
            break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, Tensor) for v in payload.values()):
        raise UserError(f"model.weights {str(path)!r} holds no state dict of tensors; {hint}")
    if all(k.startswith("module.") for k in payload):  # saved from a DistributedDataParallel wrapper
        payload = {k[len("module.") :]: v for k, v in payload.items()}
    return payload


def load_weights_into(module: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """``module.load_state_dict(state)``; a one-line UserError naming the keys that do not fit."""
    load_state_checked(module, state, source, "use weights saved from the same model and kwargs")


# --------------------------------------------------------------------------- user factories


def split_factory_spec(spec: str) -> tuple[str, str]:
    """``"nets/my_net.py:make"`` -> ``("nets/my_net.py", "make")``; ``"pkg.mod:make"`` likewise."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not _IDENTIFIER.fullmatch(attr):
        raise UserError(f"{spec!r} does not name a factory; write path/to/file.py:factory or package.module:factory")
    if not target.endswith(".py") and not _DOTTED.fullmatch(target):
        raise UserError(f"{target!r} in {spec!r} is neither a .py file nor a dotted module name; write path/to/file.py")
    return target, attr


def is_factory_spec(spec: str) -> bool:
    """Whether ``spec`` looks like ``path/to/file.py:factory`` or ``package.module:factory``."""
    try:
        split_factory_spec(spec)
    except UserError:
        return False
    return spec.partition(":")[0] not in LIBRARIES


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable ``factory`` of ``path/to/file.py:factory`` or ``package.module:factory``.

    A file is run as Python runs a script (its folder goes first on ``sys.path``, so it can
    import its neighbours), once per file: loading it again returns the same module. A module
    is imported with the current directory on ``sys.path`` (last), as ``python -m`` would find it.

    Raises:
        UserError: a malformed spec, a missing file or module, an import that fails (its
            exception in one line), no such attribute (with the closest names), not callable.
    """
    target, attr = split_factory_spec(spec)
    module = _import_file(target) if target.endswith(".py") else import_module(target)
    factory = getattr(module, attr, None)
    if factory is None:
        public = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        close = difflib.get_close_matches(attr, public, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"{target!r} has no {attr!r}{hint}; its callables: {', '.join(public[:10]) or 'none'}")
    if not callable(factory):
        raise UserError(f"{spec!r} is not callable (type {type(factory).__name__}); name a function or class")
    return factory


def _import_file(target: str) -> ModuleType:
    """Run the file ``target`` as a module (cached per resolved path)."""
    path = regular_file(target, "model file", "pass path/to/file.py:factory with an existing file").resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:10]
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_softmaxlab_user_{stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"{str(target)!r} cannot be imported as Python; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before running it, as import does (dataclasses and pickle look it up)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise UserError(f"importing {str(target)!r} failed ({short_error(exc)}); fix the file") from None
    return module


def import_module(
    target: str,
    missing: str = "check the name, run from the folder that holds it, or pass its file as path/to/file.py:factory",
) -> ModuleType:
    """``importlib.import_module(target)`` with the current directory on ``sys.path``, as
    ``package.module:NAME`` finds a module; its failures as one-line UserErrors (``missing``: what
    to do when there is no such module)."""
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            raise UserError(f"no module {target!r}; {missing}") from None
        raise UserError(f"importing {target!r} failed ({short_error(exc)}); install what it needs") from None
    except (Exception, SystemExit) as exc:
        raise UserError(f"importing {target!r} failed ({short_error(exc)}); fix the module") from None


def call_factory(spec: str, factory: Callable[..., Any], kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """``factory(**kwargs)``, which must return an ``nn.Module``; ``spec`` names it in errors.

    Raises:
        UserError: the factory raises (its exception in one line) or returns no ``nn.Module``.
    """
    try:
        module = factory(**dict(kwargs or {}))
    except torch.OutOfMemoryError:
        raise
    except (Exception, SystemExit) as exc:  # a factory that calls sys.exit is a failing factory too
        raise UserError(f"{spec} raised {short_error(exc)} when called with kwargs {dict(kwargs or {})}") from None
    if not isinstance(module, nn.Module):
        raise UserError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module; return the network")
    if isinstance(module, torch.jit.ScriptModule):
        raise UserError(
            f"{spec} returned a TorchScript module, whose calls cannot be traced or hooked; return the nn.Module "
            "before torch.jit.script / torch.jit.trace"
        )
    # torch.compile's wrapper: the module it compiles is the network (softmaxlab compiles with train.compile)
    inner = getattr(module, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else module


def build_user_model(spec: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """The module that the factory ``spec`` (:func:`load_factory`) returns for ``**kwargs``."""
    return call_factory(spec, load_factory(spec), kwargs)


__all__ = [
    "LIBRARIES",
    "build_user_model",
    "call_factory",
    "check_library_name",
    "construct_library_model",
    "create_library_model",
    "is_factory_spec",
    "load_factory",
    "load_weights_file",
    "load_weights_into",
    "select_output",
    "split_factory_spec",
    "split_library_name",
]
