"""CPU decoding (core/cpu_decoding): the growing KV cache is exact, packed linears are exact to float rounding.

References are computed independently: the cache against ``torch.cat`` (what ``DynamicCache`` does), the linears
against ``torch.nn.functional.linear`` on the same (or bf16-rounded) numbers, and whole generations against HF
``generate`` with its own cache and kernels.
"""

from __future__ import annotations

import pytest
import torch
from transformers.cache_utils import DynamicCache

from em_trainer import EMConfig
from em_trainer.core.config import EMConfigError
from em_trainer.core.cpu_decoding import (
    GrowingCache,
    GrowingLayer,
    PackedLinears,
    bf16_matmul_supported,
    cpu_decoding_unavailable,
    matmul_kernel,
)
from em_trainer.core.shared_prefill import generate_with_shared_prefill
from em_trainer.decoding.em_inf import EMInfSettings
from em_trainer.decoding.generation import HFGenerator, SamplingSettings, make_generator

from .conftest import build_tiny_model
from .test_loss_reference import make_trainer

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs a PyTorch build with oneDNN")
needs_bf16 = pytest.mark.skipif(not bf16_matmul_supported(), reason="this CPU has no native bf16 matrix products")

PROMPTS = ["Hi", "A much longer prompt, so that the other one is left-padded."]


def test_growing_layer_holds_what_concatenation_holds():
    torch.manual_seed(0)
    layer, keys, values = GrowingLayer(reserve=6), None, None
    for step, new in enumerate([5, 1, 1, 3, 1, 1, 1]):
        k, v = torch.randn(3, 2, new, 4), torch.randn(3, 2, new, 4)
        keys = k if keys is None else torch.cat([keys, k], dim=-2)
        values = v if values is None else torch.cat([values, v], dim=-2)
        got_k, got_v = layer.update(k, v)
        assert torch.equal(got_k, keys) and torch.equal(got_v, values), f"step {step}"
        if step == 3:  # what generate's helpers do to a cache: reorder, select, crop; the layer re-adopts
            order = torch.tensor([2, 0, 1])
            layer.reorder_cache(order)
            keys, values = keys[order], values[order]
        if step == 4:
            layer.crop(-2)
            keys, values = keys[..., :-2, :], values[..., :-2, :]
    assert layer.get_seq_length() == keys.shape[-2]
    assert layer._key_buffer.shape[-2] >= keys.shape[-2]


@pytest.mark.parametrize("sample", [False, True])
def test_growing_cache_generates_bit_for_bit_what_dynamic_cache_does(tokenizer, sample):
    model = build_tiny_model(tokenizer).eval()
    encoded = tokenizer(PROMPTS * 2, return_tensors="pt", padding=True, add_special_tokens=False)
    assert encoded["attention_mask"].min() == 0, "left padding is exercised"
    kwargs = dict(max_new_tokens=20, do_sample=sample, pad_token_id=tokenizer.pad_token_id, output_scores=True,
                  return_dict_in_generate=True)  # fmt: skip
    if sample:
        kwargs.update(temperature=0.9, top_p=1.0, top_k=0)
    outputs = []
    for cache in (DynamicCache(config=model.config), GrowingCache(model.config, reserve=8)):  # 8: it must grow
        torch.manual_seed(0)
        outputs.append(model.generate(**encoded, past_key_values=cache, **kwargs))
    plain, growing = outputs
    assert torch.equal(plain.sequences, growing.sequences)
    same_logits = all(torch.equal(a, b) for a, b in zip(plain.scores, growing.scores, strict=True))
    assert same_logits, "equal logits, bit for bit"


def test_packed_linear_agrees_with_linear_and_follows_weight_updates():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(576, 1536), torch.nn.ReLU(), torch.nn.Linear(1536, 576, bias=False))
    x = torch.randn(8, 576)
    packs = PackedLinears()
    with torch.no_grad():
        want = model(x)
        with packs.applied(model, rows=8) as routed:
            got = model(x)
        assert routed == 2
        assert not torch.equal(got, want), "another kernel ran (same numbers would mean the patch did nothing)"
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with packs.applied(model, rows=8):
        y = model(x)  # a forward with gradients takes the usual path (packed weights have none)
        y.sum().backward()
    assert torch.equal(y.detach(), want), "the usual kernel, bit for bit"
    assert model[0].weight.grad is not None
    assert "forward" not in vars(model[0]), "the patch is undone"
    torch.optim.SGD(model.parameters(), lr=0.5).step()  # in place: bumps the weights' version counters
    with torch.no_grad():
        want = model(x)
        with packs.applied(model, rows=8):
            got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_bf16
def test_bf16_packs_compute_the_products_of_bf16_rounded_numbers():
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 128)
    x = torch.randn(8, 256)
    with torch.no_grad():
        with PackedLinears(torch.bfloat16).applied(layer, rows=8):
            got = layer(x)
        rounded = torch.nn.functional.linear(
            x.bfloat16().float(), layer.weight.bfloat16().float(), layer.bias.bfloat16().float()
        )
        exact = layer(x)
    assert got.dtype == torch.float32
    # bf16 output rounding (8 bits of mantissa) against the exact product of the rounded inputs
    torch.testing.assert_close(got, rounded, rtol=1e-2, atol=2e-2)
    assert (got - exact).abs().max() > 1e-4, "bf16 products differ from fp32 ones"


def test_unavailable_reasons_and_kernel_names(tokenizer):
    model = build_tiny_model(tokenizer)
    assert cpu_decoding_unavailable(model) is None
    assert matmul_kernel(model, True) == "onednn-packed-float32"
    assert matmul_kernel(model, False) == "aten"
    assert "float16" in cpu_decoding_unavailable(model.half())


@pytest.mark.parametrize("sample", [False, True])
def test_packed_generation_samples_the_same_tokens_on_the_tiny_model(tokenizer, sample):
    model = build_tiny_model(tokenizer).eval()
    encoded = tokenizer(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    input_ids = encoded["input_ids"].repeat_interleave(3, 0)
    attention_mask = encoded["attention_mask"].repeat_interleave(3, 0)
    kwargs = dict(max_new_tokens=24, do_sample=sample, pad_token_id=tokenizer.pad_token_id)
    if sample:
        kwargs.update(temperature=0.9, top_p=1.0, top_k=0)
    torch.manual_seed(0)
    plain = model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    torch.manual_seed(0)
    fast = generate_with_shared_prefill(
        model, input_ids, attention_mask, growing_cache=True, packs=PackedLinears(), **kwargs
    )
    assert torch.equal(fast, plain)


@pytest.mark.slow
def test_smollm2_fast_decoding_keeps_every_token(smollm2_dir):
    """The real model, left padding, greedy, and sampled with EM-INF on: the same tokens as HF's own path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    questions = ["What is 17 * 23?", "Hi"]
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    for em_inf, settings in (
        (None, SamplingSettings(temperature=0.0, max_new_tokens=32)),
        (EMInfSettings(), SamplingSettings(temperature=0.7, n=2, max_new_tokens=32, seed=3)),
    ):
        results = {}
        for fast in (False, True):
            generator = make_generator(model, "hf", em_inf=em_inf, tokenizer=tokenizer, cpu_fast_decoding=fast)
            results[fast] = [[c.token_ids for c in samples] for samples in generator.generate(prompts, settings)]
            assert generator.identity["matmul"] == ("onednn-packed-float32" if fast else "aten")
        assert results[True] == results[False], (em_inf, settings)


def test_generator_identity_names_the_kernel(tokenizer):
    model = build_tiny_model(tokenizer)
    fast = HFGenerator(model, tokenizer).identity
    plain = HFGenerator(model, tokenizer, cpu_fast_decoding=False).identity
    assert fast["matmul"] == "onednn-packed-float32" and plain["matmul"] == "aten"
    assert {k: v for k, v in fast.items() if k != "matmul"} == {k: v for k, v in plain.items() if k != "matmul"}


def test_training_rollouts_are_the_same_tokens_with_fast_decoding(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    completions, routed = {}, {}
    original = PackedLinears.applied
    for fast in (True, False):
        trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path / str(fast), cpu_fast_rollouts=fast)
        calls = routed[fast] = []

        def spy(self, model, rows, _calls=calls):
            _calls.append((self.dtype, rows))
            return original(self, model, rows)

        monkeypatch.setattr(PackedLinears, "applied", spy)
        rows = [trainer.train_dataset[0]] * 2 + [trainer.train_dataset[1]] * 2
        trainer.model.train()
        torch.manual_seed(0)
        completions[fast] = trainer._generate_and_score_completions(rows)["completion_ids"]
        assert "generate" not in vars(trainer.model), "the generate patch is undone"
    assert routed[True] == [(None, 4)] and routed[False] == []
    assert torch.equal(completions[True], completions[False])


@needs_bf16
def test_rollout_dtype_bfloat16_packs_bf16_weights_for_the_rollout(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    original = PackedLinears._packed
    for dtype in (None, "bfloat16"):
        trainer = make_trainer(tiny_model_dir, tokenizer, tmp_path / str(dtype), rollout_dtype=dtype, temperature=1.0)
        seen = []

        def spy(self, module, rows, _seen=seen):
            packed = original(self, module, rows)
            _seen.append(packed[0].dtype)
            return packed

        monkeypatch.setattr(PackedLinears, "_packed", spy)
        trainer.model.train()
        torch.manual_seed(0)
        trainer._generate_and_score_completions([trainer.train_dataset[0]] * 4)
        monkeypatch.undo()
        assert set(seen) == {torch.bfloat16 if dtype else torch.float32}, "every linear of the rollout, that dtype"
        assert trainer.model.dtype == torch.float32, "the policy keeps its own precision"
    # What bf16 packs do to the numbers: logits move by bf16 rounding (whether a sampled token flips on this tiny,
    # near-uniform model depends on the thread count, so the samples themselves are not compared).
    encoded = tokenizer(["A much longer prompt, so that there is something to compute."], return_tensors="pt")
    with torch.no_grad():
        plain = trainer.model(**encoded).logits
        with PackedLinears(torch.bfloat16).applied(trainer.model, rows=1):
            rounded = trainer.model(**encoded).logits
    gap = (rounded - plain).abs().max()
    assert 0 < gap < 0.1 * plain.abs().max(), "rounded, not another computation"


@pytest.mark.parametrize(
    "settings, needle",
    [
        ({"rollout_dtype": "float16"}, "rollout_dtype='float16'"),
        ({"rollout_dtype": "bfloat16", "cpu_fast_rollouts": False}, "needs cpu_fast_rollouts=True"),
        ({"rollout_dtype": "bfloat16", "use_vllm": True}, "vLLM has its own"),
    ],
)
def test_rollout_dtype_refusals(settings, needle):
    with pytest.raises(EMConfigError, match=needle):
        EMConfig("o", **settings)


@pytest.mark.parametrize("verb", ["eval", "select", "generate"])
def test_cpu_decoding_flag_reaches_the_generator(verb, tiny_model_dir):
    import importlib

    from em_trainer.cli.common import generator_kwargs

    parser = importlib.import_module(f"em_trainer.cli.{verb}").build_parser()
    required = {"eval": [], "select": ["--pool", "p.jsonl"], "generate": ["--prompt", "hi"]}[verb]
    required += ["--backend", "hf"]
    kernels = {}
    for choice in ("fast", "plain", None):
        argv = required if choice is None else [*required, "--cpu_decoding", choice]
        kwargs = generator_kwargs(parser.parse_args(argv))
        kwargs.pop("vllm_kwargs")
        kernels[choice] = make_generator(tiny_model_dir, "hf", **kwargs).identity["matmul"]
    assert kernels == {"fast": "onednn-packed-float32", "plain": "aten", None: "onednn-packed-float32"}
