"""One-shot EM as a script for `accelerate launch`: the same options as `em-trainer train`.

accelerate launch recipes/em_one_shot.py --config recipes/configs/qwen2.5-math-7b/em_one_shot.yaml
python recipes/em_one_shot.py --config recipes/configs/smollm2-135m-cpu/em_one_shot.yaml
"""

import sys

from em_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
