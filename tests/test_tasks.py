"""Tasks: offline data splits, model families, and deterministic training loops."""
import pytest
import torch

from weightspace.tasks import (ATTENTION_KINDS, CHAR_VOCAB, MLP, ResNet, SmallCNN, TinyGPT, build, char_batch,
                               char_batches, digits_flat_split, digits_split, example_input, stdlib_corpus,
                               tabular_split, train_classifier, train_lm)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def corpus():
    return stdlib_corpus(max_chars=200_000)


def test_digits_split_sizes_and_stratification():
    d = digits_split()
    assert d.x_train.shape == (1437, 1, 8, 8) and d.x_val.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.long
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) == 1.0
    counts = torch.bincount(d.y_val, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37
    assert d.num_classes == 10 and d.input_shape == (1, 8, 8)
    flat = digits_flat_split()
    assert flat.x_train.shape == (1437, 64) and torch.equal(flat.x_train, d.x_train.reshape(-1, 64))
    assert torch.equal(digits_split().y_val, d.y_val)
    assert not torch.equal(digits_split(seed=1).y_val, d.y_val)


@pytest.mark.parametrize("name", ["wine", "breast_cancer", "iris"])
def test_tabular_split_standardised(name):
    d = tabular_split(name)
    assert len(d.y_train) + len(d.y_val) > 100
    assert torch.allclose(d.x_train.mean(0), torch.zeros(d.in_features), atol=1e-4)
    assert set(d.y_val.tolist()) == set(range(d.num_classes))


def test_tabular_unknown_name():
    with pytest.raises(ValueError, match="wine"):
        tabular_split("mnist")


def test_stdlib_corpus(corpus):
    assert corpus.vocab == CHAR_VOCAB and corpus.vocab_size == 97
    assert len(corpus.train_ids) + len(corpus.val_ids) == 200_000
    assert len(corpus.val_ids) == 20_000
    assert corpus.files[0] == "__future__.py"
    assert "import" in corpus.decode(corpus.train_ids[:5000])
    assert stdlib_corpus(max_chars=200_000).sha256 == corpus.sha256
    assert corpus.decode(corpus.encode("def f():\n\treturn 1")) == "def f():\n\treturn 1"


def test_char_batches(corpus):
    x, y = char_batch(corpus.train_ids, 16, 4, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    x2, _ = next(char_batches(corpus.train_ids, 16, 4, torch.Generator().manual_seed(0)))
    assert torch.equal(x, x2)


@pytest.mark.parametrize("family,kwargs,out_shape", [
    ("mlp", dict(widths=[16, 8], activation="tanh"), (2, 10)),
    ("mlp", dict(in_features=13, widths=[], out_features=3, bias=False), (2, 3)),
    ("cnn", dict(), (2, 10)),
    ("cnn", dict(channels=(4, 8, 16), batchnorm=True, activation="gelu"), (2, 10)),
    ("resnet", dict(), (2, 10)),
    ("resnet", dict(widths=(4, 8), blocks_per_stage=2, in_channels=3, num_classes=5), (2, 5)),
    ("gpt", dict(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1), (2, 6, 11)),
])
def test_family_forward_shapes(family, kwargs, out_shape):
    model = build(family, seed=0, **kwargs)
    x = example_input(model)
    assert model(x).shape == out_shape
    assert torch.equal(example_input(family, **kwargs), x)


def test_build_seed_is_reproducible_and_local():
    state = torch.random.get_rng_state()
    a, b = build("mlp", seed=3, widths=[8]), build("mlp", seed=3, widths=[8])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    with pytest.raises(ValueError, match="unknown model family"):
        build("transformer")


def test_small_cnn_close_to_fm16():
    n = sum(p.numel() for p in SmallCNN(channels=(16, 32, 32), batchnorm=False).parameters())
    assert 13_000 < n < 15_500
    bn = SmallCNN(batchnorm=True)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 3


def test_resnet_downsampling_shortcuts():
    model = ResNet(widths=(4, 8, 8))
    shortcuts = [len(b.shortcut) for b in model.blocks]
    assert shortcuts == [0, 2, 2]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="activation"):
        MLP(64, [8], 10, activation="swish")
    with pytest.raises(ValueError, match="divisible"):
        TinyGPT(d_model=10, n_head=3)
    with pytest.raises(ValueError, match="attention"):
        TinyGPT(attention="flash")


def test_gpt_tied_embeddings():
    tied = TinyGPT(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1)
    assert tied.lm_head.weight is tied.wte.weight
    untied = TinyGPT(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1, tie_embeddings=False)
    assert untied.lm_head.weight is not untied.wte.weight


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_gpt_attention_variants_train(attention, corpus):
    model = build("gpt", seed=0, vocab_size=corpus.vocab_size, block_size=16, n_layer=1, n_head=2, d_model=16,
                  attention=attention)
    x = example_input(model)
    y = model(x)
    assert y.shape == (2, 16, corpus.vocab_size)
    # causal: changing the last token leaves earlier positions' logits unchanged
    x2 = x.clone()
    x2[:, -1] = (x2[:, -1] + 1) % corpus.vocab_size
    with torch.no_grad():
        assert torch.allclose(model(x)[:, :-1], model(x2)[:, :-1], atol=1e-5)
    result = train_lm(model, corpus, steps=30, lr=1e-2, eval_every=15, eval_batches=2)
    assert [h["step"] for h in result.history] == [0, 15, 30]
    assert result.final["train_loss"] < result.history[0]["train_loss"] - 0.5


def test_mha_matches_separate_given_same_weights():
    torch.manual_seed(0)
    sep = TinyGPT(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1, attention="separate")
    mha = TinyGPT(vocab_size=11, block_size=6, d_model=8, n_head=2, n_layer=1, attention="mha")
    sd = {k: v for k, v in sep.state_dict().items() if ".attn." not in k}
    a = sep.blocks[0].attn
    sd["blocks.0.attn.mha.in_proj_weight"] = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
    sd["blocks.0.attn.mha.in_proj_bias"] = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
    sd["blocks.0.attn.mha.out_proj.weight"] = a.c_proj.weight
    sd["blocks.0.attn.mha.out_proj.bias"] = a.c_proj.bias
    mha.load_state_dict(sd)
    x = example_input(sep)
    with torch.no_grad():
        assert torch.allclose(sep(x), mha(x), atol=1e-5)


def test_classifier_training_is_deterministic():
    data = digits_flat_split()
    runs = []
    for _ in range(2):
        model = build("mlp", seed=1, widths=[16])
        seen = []
        result = train_classifier(model, data, steps=20, lr=1e-2, seed=5, eval_every=10,
                                  callback=lambda s, m, met: seen.append((s, met["train_loss"])))
        runs.append((result.history, seen, model.state_dict()))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert [s for s, _ in runs[0][1]] == [0, 10, 20]
    assert all(torch.equal(runs[0][2][k], runs[1][2][k]) for k in runs[0][2])
    other = train_classifier(build("mlp", seed=1, widths=[16]), data, steps=20, lr=1e-2, seed=6)
    assert other.final != runs[0][0][-1]


def test_lm_training_is_deterministic(corpus):
    hist = []
    for _ in range(2):
        model = build("gpt", seed=0, vocab_size=97, block_size=8, n_layer=1, n_head=2, d_model=8)
        hist.append(train_lm(model, corpus, steps=5, lr=1e-2, seed=2, eval_batches=1).history)
    assert hist[0] == hist[1]


def test_tiny_mlp_beats_chance_on_digits():
    data = digits_flat_split()
    result = train_classifier(build("mlp", seed=0, widths=[32]), data, steps=150, lr=1e-2, seed=0)
    assert result.history[0]["test_acc"] < 0.3
    assert result.final["test_acc"] > 0.85
    assert set(result.final) == {"step", "train_loss", "train_acc", "test_loss", "test_acc"}


def test_cnn_with_batchnorm_trains():
    data = digits_split()
    model = build("cnn", seed=0, channels=(8, 8, 8), batchnorm=True)
    result = train_classifier(model, data, steps=60, lr=1e-2, seed=0, eval_every=30)
    assert result.final["train_loss"] < result.history[0]["train_loss"]
    assert not model.training


def test_divergence_stops_early():
    data = digits_flat_split()
    model = build("mlp", seed=0, widths=[16])
    with torch.no_grad():
        model.net[0].weight.fill_(float("nan"))
    saved = []
    result = train_classifier(model, data, steps=10, callback=lambda s, m, met: saved.append(s))
    assert result.diverged and saved == [0]


def test_optimizer_errors():
    with pytest.raises(ValueError, match="optimizer"):
        train_classifier(build("mlp", widths=[4]), digits_flat_split(), steps=1, optimizer="lion")
