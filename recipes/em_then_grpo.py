"""EM then GRPO: 10 steps of one-shot EM, then GRPO with a math-verify accuracy reward from the EM weights.

    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/em_then_grpo.py \
        --config recipes/configs/qwen2.5-math-7b/em_then_grpo.yaml
    python recipes/em_then_grpo.py --config recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml --set grpo.max_steps=2
    python recipes/em_then_grpo.py --config recipes/configs/smollm2-135m-cpu/em_then_grpo.yaml --order grpo_then_em

Parsed with TrlParser: every top-level key of the YAML is also a flag (RecipeArguments); `--set section.key=value`
changes a key of the `em:` or `grpo:` section. A rerun skips a finished phase and resumes an interrupted one from its
last checkpoint.
"""

import sys

from em_trainer.cli.common import USER_ERRORS
from em_trainer.data.paths import config_file_from_argv
from em_trainer.workflows.em_then_grpo import (
    PipelineConfigError,
    load_config,
    recipe_parser,
    run_em_then_grpo,
    split_set,
)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        recipe_parser().print_help()
        return 0
    try:
        config = config_file_from_argv(argv)
        if config is None:
            raise PipelineConfigError("--config is required: a YAML with model, output_dir, em: {...}, grpo: {...}.")
        flags, overrides = split_set(argv)
        flags = [a for i, a in enumerate(flags) if a != "--config" and (i == 0 or flags[i - 1] != "--config")]
        flags = [a for a in flags if not a.startswith("--config=")]
        run_em_then_grpo(load_config(config, overrides, argv=flags))
    except USER_ERRORS as error:  # a bad input: one line naming it, never a traceback
        print(f"em_then_grpo: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
