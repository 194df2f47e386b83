"""Nets from elsewhere: timm's CNNs (``--arch timm:NAME``) and the user's own ``nn.Module``
(``--arch path/to/net.py:Name`` or ``--arch package.module:Name``).

timm (Wightman, PyTorch Image Models) builds its nets by ``timm.create_model``; their input
size, mean and std come from the net's own pretrained config. A user's module is imported from
its file or package; ``Name`` is a class or a function that returns the net, called with the
class count and input channels where its signature takes them (``num_classes`` /
``in_channels``, or timm's ``in_chans``). A checkpoint stores the spec, so any script rebuilds
the same net from the same file.
"""
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from model.errors import UserError, one_line

TIMM_PREFIX = "timm:"

CLASS_ARGUMENTS = ("num_classes", "n_classes", "classes")

CHANNEL_ARGUMENTS = ("in_channels", "in_chans", "channels")


def is_timm(arch):
    return arch.startswith(TIMM_PREFIX)


def is_user_module(arch):
    """Whether ``arch`` names a module of the user's: ``file.py:Name`` or ``pkg.mod:Name``."""
    return ":" in arch and not is_timm(arch)


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("--arch timm:NAME needs timm: pip install timm") from None
    return timm


def check_timm(arch):
    """Refuse a name timm does not know, in one line."""
    timm, name = _timm(), arch[len(TIMM_PREFIX):]
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:5]
        hint = f"; close: {', '.join(close)}" if close else ""
        raise UserError(f"--arch {arch}: timm has no model '{name}'{hint}")
    return name


def timm_input(arch):
    """(image_size, mean, std) from timm's pretrained config of the net."""
    timm, name = _timm(), check_timm(arch)
    config = timm.models.get_pretrained_cfg(name)
    size = config.input_size[-1] if config is not None else 224
    mean = config.mean if config is not None else (0.485, 0.456, 0.406)
    std = config.std if config is not None else (0.229, 0.224, 0.225)
    return int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std)


def build_timm(arch, in_channels, num_classes, image_size, small_stem=None):
    """timm's net (random weights) for these inputs and classes, made ready as torchvision's
    (``model.nets.zoo.prepare_imported``: the small-image stem below 64 px)."""
    from model.nets.zoo import SMALL_IMAGE, prepare_imported

    timm, name = _timm(), check_timm(arch)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                  in_chans=in_channels)
    except Exception as error:  # a net that cannot take these arguments
        raise UserError(f"--arch {arch}: timm could not build it ({one_line(error)})") from None
    if small_stem is None:
        small_stem = image_size < SMALL_IMAGE
    return prepare_imported(model, in_channels, image_size, small_stem)


def _import(spec):
    """The object ``Name`` of ``file.py:Name`` or ``package.module:Name``."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UserError(f"--arch {spec}: write path/to/net.py:Name or package.module:Name")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UserError(f"--arch {spec}: no such file {where}")
        module_name = "cnnviz_user_" + re.sub(r"\W", "_", str(path.resolve()))
        module = sys.modules.get(module_name)
        if module is None:
            loader = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[module_name] = module
            try:
                loader.loader.exec_module(module)
            except Exception as error:
                del sys.modules[module_name]
                raise UserError(f"--arch {spec}: importing {where} failed "
                                f"({one_line(error)})") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as error:
            raise UserError(f"--arch {spec}: cannot import {where} ({one_line(error)})") \
                from None
    if not hasattr(module, name):
        found = [key for key, value in vars(module).items()
                 if inspect.isclass(value) and value.__module__ == module.__name__]
        raise UserError(f"--arch {spec}: {where} has no '{name}'"
                        + (f"; it defines {', '.join(found[:8])}" if found else ""))
    return getattr(module, name)


def build_user_module(spec, in_channels, num_classes, image_size):
    """The user's net: ``Name(num_classes=..., in_channels=...)`` as far as its signature
    takes them, with the input declared.

    Raises:
        UserError: an unimportable spec, a constructor that fails, or something that is no
            ``nn.Module``.
    """
    import torch.nn as nn

    from model.nets.anatomy import declare_input

    factory = _import(spec)
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    kwargs = {}
    for names, value in ((CLASS_ARGUMENTS, num_classes), (CHANNEL_ARGUMENTS, in_channels)):
        name = next((n for n in names if n in parameters), names[0] if takes_any else None)
        if name is not None:
            kwargs[name] = value
    try:
        model = factory(**kwargs)
    except Exception as error:
        raise UserError(f"--arch {spec}: {spec.rpartition(':')[2]}"
                        f"({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed "
                        f"({one_line(error)})") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"--arch {spec}: {spec.rpartition(':')[2]} gave a "
                        f"{type(model).__name__}, not an nn.Module")
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return declare_input(model, in_channels, image_size)
