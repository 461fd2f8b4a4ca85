"""SPD's pure core: what the cycle is, with no vLLM in it.

``pipeline`` is the readable reference (one request's in-flight window, commits and
flushes); ``cycle_state`` is the same rules as tensors for a whole batch, and
``stage_plan`` what each stage runs in a cycle and which KV rows it writes; ``verify`` is
the verification math (greedy and rejection sampling with vLLM's warping);
``keyed_random`` the draws keyed on (seed, position); ``layout`` the stages and anchors.
The engine glue (``vllm_spd.engine``) and the drafters (``vllm_spd.drafters``) build on
these; nothing here imports them.
"""
