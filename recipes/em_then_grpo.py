"""EM then GRPO: 10 steps of one-shot EM, then GRPO with a math-verify accuracy reward from the EM weights.

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/em_then_grpo.py \
        --config recipes/configs/qwen2.5-math-7b/em_then_grpo.yaml
    python recipes/em_then_grpo.py --config recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml --set grpo.max_steps=2

A rerun skips a finished phase and resumes an interrupted one from its last checkpoint.
"""

import argparse
import sys

from em_trainer.cli.common import USER_ERRORS
from em_trainer.workflows.em_then_grpo import load_config, run_em_then_grpo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML with model, output_dir, em: {...} and grpo: {...}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. grpo.max_steps=5")
    args = parser.parse_args()
    try:
        config = load_config(args.config, args.set)
        run_em_then_grpo(config)
    except USER_ERRORS as error:  # a bad input: one line naming it, never a traceback
        print(f"em_then_grpo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
