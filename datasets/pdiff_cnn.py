"""Build the `pdiff-cnn` zoo (see datasets/README.md): `python datasets/pdiff_cnn.py --out zoos/pdiff-cnn --size small`."""
from weightspace.tasks.zoo import script_main

if __name__ == "__main__":
    script_main("pdiff-cnn")
