"""Train on an ECOS proxy set. Bare ``python train.py`` runs the default job (see README)."""

from ecos_lightning.cli import main

if __name__ == "__main__":
    main()
