"""``python -m softmaxlab``: the command line (what ``torchrun -m softmaxlab run ...`` starts)."""

from softmaxlab.cli import main

if __name__ == "__main__":
    main()
