"""Build the `synth-mlp` zoo (see datasets/README.md): `python datasets/synth_mlp.py --out zoos/synth-mlp --size small`."""
from weightspace.tasks.zoo import script_main

if __name__ == "__main__":
    script_main("synth-mlp")
