"""Tell users when vLLM skipped the spd plugin, instead of a bare pydantic error.

vLLM loads general plugins only if their entry-point name is in ``VLLM_PLUGINS`` (when
that variable is set). Without ``spd`` there, ``{"method": "spd"}`` dies deep in
pydantic with "Input should be 'ngram', ...". ``vllm_spd_plugin_check.pth`` (installed
next to the package) calls :func:`install` at interpreter start-up; it does nothing
unless ``VLLM_PLUGINS`` is set and lacks ``spd``. Then it wraps
``EngineArgs.create_speculative_config`` once vLLM's ``arg_utils`` is imported.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

ENTRY_POINT = "spd"
_TARGET = "vllm.engine.arg_utils"


def plugin_excluded() -> bool:
    value = os.environ.get("VLLM_PLUGINS")
    return value is not None and ENTRY_POINT not in value.split(",")


def _patch(module) -> None:
    cls = module.EngineArgs
    original = cls.create_speculative_config
    if getattr(original, "_spd_check", False):
        return

    def create_speculative_config(self, *args, **kwargs):
        spec = self.speculative_config
        if isinstance(spec, dict) and spec.get("method") == "spd" and plugin_excluded():
            raise ValueError(
                f"spd: speculative method 'spd' needs the vllm_spd plugin, which vLLM did not load: "
                f"VLLM_PLUGINS={os.environ.get('VLLM_PLUGINS')!r} does not name '{ENTRY_POINT}'. "
                f"Add it, e.g. VLLM_PLUGINS={os.environ.get('VLLM_PLUGINS') + ',' if os.environ.get('VLLM_PLUGINS') else ''}{ENTRY_POINT}, "
                "or unset VLLM_PLUGINS.")
        return original(self, *args, **kwargs)

    create_speculative_config._spd_check = True
    cls.create_speculative_config = create_speculative_config


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        loader.exec_module = exec_and_patch
        return spec


def install() -> None:
    if not plugin_excluded():
        return
    if _TARGET in sys.modules:
        _patch(sys.modules[_TARGET])
    elif not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
