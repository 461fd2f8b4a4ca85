import pytest

from vllm_spd.requests import check_sampling_params, unsupported_sampling_fields


def test_supported_params_pass():
    from vllm import SamplingParams

    check_sampling_params(SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, seed=3,
                                         stop=["\n"], max_tokens=10, min_tokens=2))


@pytest.mark.parametrize("kw, field", [({"presence_penalty": 0.5}, "presence_penalty"),
                                       ({"repetition_penalty": 1.2}, "repetition_penalty"),
                                       ({"logit_bias": {3: 1.0}}, "logit_bias"),
                                       ({"logprobs": 2}, "logprobs")])
def test_unsupported_params_named(kw, field):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    params = SamplingParams(**kw)
    assert unsupported_sampling_fields(params) == [field]
    with pytest.raises(VLLMValidationError, match=f"'spd' does not support {field}"):
        check_sampling_params(params)
