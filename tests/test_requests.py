import pytest

from vllm_spd.requests import check_sampling_params, unsupported_sampling_fields


def _structured():
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(regex="a+")


def test_supported_params_pass():
    from vllm import SamplingParams

    check_sampling_params(SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, seed=3,
                                         stop=["\n"], max_tokens=10, min_tokens=2, presence_penalty=0.5,
                                         frequency_penalty=0.2, repetition_penalty=1.1, logit_bias={3: 1.0},
                                         allowed_token_ids=[1, 2, 3], logprobs=2, prompt_logprobs=1, n=2,
                                         logprob_token_ids=[4, 5], structured_outputs=_structured()))


def test_unsupported_params_named():
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    params = SamplingParams(thinking_token_budget=16)
    assert unsupported_sampling_fields(params) == ["thinking_token_budget"]
    with pytest.raises(VLLMValidationError, match="'spd' does not support thinking_token_budget"):
        check_sampling_params(params)
