"""Train one experiment through its whole protocol: python launch/train.py [fit] --config FILE [overrides]."""

from lit_dendrite.cli import main

if __name__ == "__main__":
    main()
