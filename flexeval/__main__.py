"""`python -m flexeval ...`: the CLI, also as `torchrun -m flexeval run ...` / `accelerate launch -m flexeval run ...`."""

from flexeval.cli import main

if __name__ == "__main__":
    main()
