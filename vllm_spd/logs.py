"""vllm_spd's log lines go where vLLM's go, in vLLM's format and at vLLM's level.

vLLM configures only the ``vllm`` logger (its handler, its level, ``propagate=False``),
and does so when an engine or the CLI starts, often after the plugin registered. The
``vllm_spd`` logger is not below ``vllm`` by name, so its records went to the root
logger, which has no handler under ``vllm serve``: Python's last-resort handler then
dropped every INFO line, the periodic ``spd: alpha=...`` line included.
:func:`use_vllm_logging` hangs ``vllm_spd`` under ``vllm`` in the logger tree. Its
records then reach whatever vLLM's logging is at that moment, as those of vLLM's own
``vllm.*`` loggers do: same handler, format and level, however and whenever vLLM
configures it, and never printed twice.
"""

from __future__ import annotations

import logging

LOGGER = "vllm_spd"


def use_vllm_logging() -> None:
    """Idempotent; every ``vllm_spd.*`` logger follows, being below ``vllm_spd``."""
    vllm_logger = logging.getLogger("vllm")
    logger = logging.getLogger(LOGGER)
    if logger.parent is vllm_logger:
        return
    logger.parent = vllm_logger
    # Levels are cached per logger; setting one clears every cache, so the new parent's
    # level counts from here on. NOTSET: the effective level is vLLM's.
    logger.setLevel(logger.level)
