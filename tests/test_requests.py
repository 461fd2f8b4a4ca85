import pytest

from vllm_spd.requests import check_sampling_params, unsupported_sampling_fields


def test_supported_params_pass():
    from vllm import SamplingParams

    check_sampling_params(SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, seed=3,
                                         stop=["\n"], max_tokens=10, min_tokens=2, presence_penalty=0.5,
                                         frequency_penalty=0.2, repetition_penalty=1.1, logit_bias={3: 1.0},
                                         allowed_token_ids=[1, 2, 3], logprobs=2, prompt_logprobs=1, n=2))


def _structured():
    from vllm.sampling_params import StructuredOutputsParams

    return StructuredOutputsParams(regex="a+")


@pytest.mark.parametrize("kw, field, says", [({"structured_outputs": _structured}, "structured_outputs",
                                              "structured outputs"),
                                             ({"thinking_token_budget": 16}, "thinking_token_budget",
                                              "thinking_token_budget")])
def test_unsupported_params_named(kw, field, says):
    from vllm import SamplingParams
    from vllm.exceptions import VLLMValidationError

    params = SamplingParams(**{k: v() if callable(v) else v for k, v in kw.items()})
    assert unsupported_sampling_fields(params) == [field]
    with pytest.raises(VLLMValidationError, match=f"'spd' does not support {says}"):
        check_sampling_params(params)
