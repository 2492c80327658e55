"""Build the `digits-cnn` zoo (see datasets/README.md): `python datasets/digits_cnn.py --out zoos/digits-cnn --size small`."""
from weightspace.tasks.zoo import script_main

if __name__ == "__main__":
    script_main("digits-cnn")
