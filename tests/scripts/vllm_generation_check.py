"""One real vLLM engine (the CPU build), shared by every generation-side check; writes what it measured as JSON.

Run by tests/test_vllm.py in its own process: vLLM's engine core is a spawned process, so the engine is built under
``if __name__ == "__main__"``, and the EM-INF processor reaches it by its qualified name.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch


def first_divergence(a: list[int], b: list[int]) -> int | None:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
        None if len(a) == len(b) else min(len(a), len(b)),
    )


def main(out_path: str, fixtures: str, problems: int) -> None:
    from vllm import LLM

    from em_trainer.data.models import resolve_model
    from em_trainer.data.prompts import render_chat
    from em_trainer.data.sources import load_pool
    from em_trainer.decoding.em_inf import EMInfSettings
    from em_trainer.decoding.generation import HFGenerator, SamplingSettings, VLLMGenerator, make_generator
    from em_trainer.decoding.vllm_em_inf import QUALIFIED_NAME
    from em_trainer.evaluation.evaluate import evaluate_benchmark
    from em_trainer.evaluation.selection import select_prompts

    path = resolve_model("smollm2-135m-instruct")
    started = time.time()
    llm = LLM(
        model=path, dtype="float32", max_model_len=1024, logits_processors=[QUALIFIED_NAME], seed=0,
        gpu_memory_utilization=0.25, logprobs_mode="processed_logprobs", enforce_eager=True,
    )  # fmt: skip
    report: dict = {"engine_start_s": time.time() - started, "engine_dtype": str(llm.llm_engine.model_config.dtype)}
    vllm_gen = VLLMGenerator.from_llm(llm)
    hf_gen = HFGenerator(path, batch_size=16, dtype=torch.float32)
    out = Path(out_path).parent

    # Greedy evaluation on the arithmetic benchmark, both backends, same prompts.
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=96)
    results = {}
    for name, gen in (("hf", hf_gen), ("vllm", vllm_gen)):
        t = time.time()
        result = evaluate_benchmark(gen, gen.tokenizer, name, "arithmetic", out / "eval", greedy, limit=problems,
                                    chunk_size=16, progress=None)  # fmt: skip
        records = [
            json.loads(x)
            for x in next((out / "eval").glob(f"{name}-*/t0/arithmetic-*/records.jsonl")).read_text().splitlines()
        ]
        results[name] = {r["index"]: r for r in records}
        tokens = sum(r["num_tokens"] for r in records)
        report[f"eval_{name}"] = {"accuracy": result.accuracy, "seconds": time.time() - t, "tokens": tokens,
                                  "tokens_per_s": tokens / (time.time() - t)}  # fmt: skip
    same_answer = [results["hf"][i]["extracted"] == results["vllm"][i]["extracted"] for i in results["hf"]]
    same_text = [results["hf"][i]["completion"] == results["vllm"][i]["completion"] for i in results["hf"]]
    report["greedy_answer_agreement"] = sum(same_answer) / len(same_answer)
    report["greedy_text_agreement"] = sum(same_text) / len(same_text)
    report["problems"] = len(same_answer)

    # EM-INF on greedy decoding: the vLLM processor against the HF one, token by token.
    settings = EMInfSettings()
    questions = ("What is 23 + 58?", "Name a prime number above 20.", "Tom has 14 apples and eats 5. How many left?")
    prompts = [render_chat(hf_gen.tokenizer, q) for q in questions]
    em_settings = SamplingSettings(temperature=0.0, max_new_tokens=32)
    hf_em = make_generator(path, backend="hf", em_inf=settings, dtype=torch.float32).generate(prompts, em_settings)
    vllm_em = VLLMGenerator.from_llm(llm, em_inf=settings).generate(prompts, em_settings)
    plain = vllm_gen.generate(prompts, em_settings)
    report["em_inf"] = [
        {
            "hf_tokens": h[0].token_ids,
            "vllm_tokens": v[0].token_ids,
            "first_divergence": first_divergence(h[0].token_ids, v[0].token_ids),
            "vllm_differs_from_plain": v[0].token_ids != p[0].token_ids,
        }  # fmt: skip
        for h, v, p in zip(hf_em, vllm_em, plain, strict=True)
    ]

    # Inside the engine, the processed log-probability of each greedy token equals EM-INF applied to the HF model's
    # logits at that position: the processor ran, on the right rows, with the request's settings.
    from vllm import SamplingParams

    from em_trainer.decoding.em_inf import entropy_minimize_logits
    from em_trainer.decoding.vllm_em_inf import extra_args

    prompt_ids = hf_gen.tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    gaps, lifts = [], []
    for request in (extra_args(settings), None):
        params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=0, extra_args=request)
        result = llm.generate([{"prompt_token_ids": prompt_ids}], params, use_tqdm=False)[0].outputs[0]
        ids = prompt_ids + list(result.token_ids)
        with torch.no_grad():
            logits = hf_gen.model(input_ids=torch.tensor([ids])).logits[0, len(prompt_ids) - 1 : -1].float()
        sharpened = entropy_minimize_logits(
            logits, settings.threshold, settings.kl_weight, settings.lr, settings.n_steps
        )[0]
        reference = torch.log_softmax(sharpened if request else logits, -1)
        for step, token in enumerate(result.token_ids):
            engine = result.logprobs[step][token].logprob
            gaps.append(abs(engine - float(reference[step, token])))
            if request:
                lifts.append(engine - float(torch.log_softmax(logits, -1)[step, token]))
    report["em_inf_logprob_max_gap"] = max(gaps)
    report["em_inf_logprob_mean_lift"] = sum(lifts) / len(lifts)

    # Selection through the vLLM backend (pass@k variance needs sampling: k=4 at T=0.5).
    rows = load_pool(f"{fixtures}/arithmetic_pool.jsonl")
    selection = select_prompts(vllm_gen, vllm_gen.tokenizer, rows, out / "selected.jsonl", model="smollm2", k=4,
                               temperature=0.5, max_new_tokens=64, batch_size=8, progress=False)  # fmt: skip
    report["selection"] = {"ranked": len(selection.ranking), "top_pass_rate": selection.ranking[0].pass_rate}
    Path(out_path).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
