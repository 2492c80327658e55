"""Build the `pdiff-mlp` zoo (see datasets/README.md): `python datasets/pdiff_mlp.py --out zoos/pdiff-mlp --size small`."""
from weightspace.tasks.zoo import script_main

if __name__ == "__main__":
    script_main("pdiff-mlp")
