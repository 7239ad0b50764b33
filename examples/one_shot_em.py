"""One-shot EM on the embedded SmolLM2-135M-Instruct, on a CPU in a few minutes.

python examples/one_shot_em.py
"""

from em_trainer import EMConfig, EMTrainer

args = EMConfig(
    output_dir="outputs/smollm2-em-example",
    responses_per_step=8,  # the paper samples 64; 8 keeps a CPU step around 20 s
    max_completion_length=64,
    report_to="none",
)
trainer = EMTrainer(model="smollm2-135m-instruct", args=args)  # the paper's one-shot prompt by default
trainer.train()
trainer.save_model()
print("trained model in", args.output_dir)
