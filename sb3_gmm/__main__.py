"""``python -m sb3_gmm``: see :mod:`sb3_gmm.cli`."""

from sb3_gmm.cli import main

if __name__ == "__main__":
    main()
