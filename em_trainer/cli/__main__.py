import sys

from . import main

if __name__ == "__main__":  # vLLM spawns its engine core, which re-imports the main module
    sys.exit(main())
