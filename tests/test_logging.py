"""vllm_spd's INFO lines reach vLLM's log, once, in vLLM's format, as under `vllm serve`."""

import os
import subprocess
import sys

SCRIPT = """
import logging, sys
if sys.argv[1] == "basic":
    logging.basicConfig(level=logging.INFO, format="ROOT %(message)s")
from vllm_spd import plugin
plugin.register()
from vllm.config.logging import LoggingConfig
from vllm.logger import configure_logging
configure_logging(LoggingConfig())   # as `vllm serve` and every engine process do
from vllm_spd.engine.scheduler import logger
logger.info("spd: alpha=0.500 (1/2 drafts accepted), marker")
logger.debug("spd: debug marker")
logging.getLogger("vllm_spd.train").info("spd: train marker")
"""


def _run(mode: str) -> str:
    env = dict(os.environ, VLLM_LOGGING_STREAM="ext://sys.stdout", VLLM_LOGGING_LEVEL="INFO",
               VLLM_CONFIGURE_LOGGING="1", NO_COLOR="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    return out.stdout + out.stderr


def test_info_lines_use_vllms_handler():
    text = _run("plain")
    lines = [line for line in text.splitlines() if "marker" in line]
    # Outside vLLM's logger tree, vllm_spd's INFO lines were dropped (Python's last
    # resort handler prints WARNING and above only).
    assert any(" INFO " in line and "spd: alpha=0.500" in line for line in lines), text
    assert any("spd: train marker" in line for line in lines), text
    assert not any("debug marker" in line for line in lines), text   # vLLM's level rules


def test_no_duplicate_with_a_root_handler():
    text = _run("basic")
    assert sum("spd: alpha=0.500" in line for line in text.splitlines()) == 1, text


def test_spec_decoding_line_shows_the_one_position_spd_drafts():
    """vLLM's 'SpecDecoding metrics' line: with spd, one per-position rate (alpha), not one
    per placeholder; other methods keep theirs."""
    from types import SimpleNamespace

    from vllm.v1.spec_decode.metrics import SpecDecodingLogging, SpecDecodingStats

    from vllm_spd.plugin import _logging_stat_logger_init

    def original(self, vllm_config, *args, **kwargs):
        self.spec_decoding_logging = SpecDecodingLogging()

    lines = {}
    for method in ("spd", "eagle3"):
        logger = SimpleNamespace()
        _logging_stat_logger_init(original, logger, SimpleNamespace(speculative_config={"method": method}))
        stats = SpecDecodingStats.new(7)
        for accepted in (1, 0, 1, 1):
            stats.observe_draft(num_draft_tokens=1, num_accepted_tokens=accepted)
        logger.spec_decoding_logging.observe(stats)
        logger.spec_decoding_logging.log(log_fn=lambda fmt, *args: lines.__setitem__(method, fmt % args))
    assert "Per-position acceptance rate: 0.750, Avg" in lines["spd"]
    assert "Per-position acceptance rate: 0.750, 0.000, 0.000" in lines["eagle3"]
