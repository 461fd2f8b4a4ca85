"""The package's layers: the pure core (``vllm_spd.core``) imports neither vLLM nor the
engine glue nor the drafters, so its reference semantics stay readable and testable
without an engine."""

import subprocess
import sys

CORE = ["pipeline", "verify", "layout", "cycle_state", "stage_plan", "keyed_random"]


def test_core_imports_no_vllm_engine_or_drafters():
    code = ("import sys\n" + "".join(f"import vllm_spd.core.{m}\n" for m in CORE)
            + "print(' '.join(sorted(m for m in sys.modules if m == 'vllm' or m.startswith(('vllm.', "
              "'vllm_spd.engine', 'vllm_spd.drafters')))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"the core pulled in: {out}"
