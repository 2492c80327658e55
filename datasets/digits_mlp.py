"""Build the `digits-mlp` zoo (see datasets/README.md): `python datasets/digits_mlp.py --out zoos/digits-mlp --size small`."""
from weightspace.tasks.zoo import script_main

if __name__ == "__main__":
    script_main("digits-mlp")
