"""``stage_compile.native_ops``: vLLM's custom ops and IR ops in their native form while
inside, as they were after."""

from torch import nn

from vllm_spd.engine.stage_compile import ir_ops, native_ops


def test_native_ops_switches_and_restores():
    from vllm import ir
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.model_executor.layers.activation import SiluAndMul

    with set_current_vllm_config(VllmConfig()):
        block = nn.Sequential(nn.Linear(4, 8), SiluAndMul())
    act = block[1]
    before = act._forward_method
    priorities = [op._priority_impls for op in ir_ops()]
    assert any(op.name == "fused_add_rms_norm" for op in ir_ops())
    for _ in range(2):   # the same objects each time, so that dynamo's guards hold
        with native_ops([block]):
            assert act._forward_method == act.forward_native != before
            assert all([impl.provider for impl in op._priority_impls] == ["native"] for op in ir_ops())
            assert not ir.op._ENABLE_TORCH_WRAP
            inside = (act._forward_method, [op._priority_impls for op in ir_ops()])
        assert act._forward_method == before
        assert [op._priority_impls for op in ir_ops()] == priorities
    with native_ops([block]):
        assert act._forward_method is inside[0]
        assert all(a is b for a, b in zip(inside[1], [op._priority_impls for op in ir_ops()]))
