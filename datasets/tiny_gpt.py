"""Build the `tiny-gpt` zoo (see datasets/README.md): `python datasets/tiny_gpt.py --out zoos/tiny-gpt --size small`."""
from weightspace.tasks.zoo import script_main

if __name__ == "__main__":
    script_main("tiny-gpt")
