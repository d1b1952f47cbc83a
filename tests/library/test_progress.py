"""progress=True shows a bar (on stderr outside Jupyter) for every training loop; False shows none."""

import pytest

import lora_core as lc

SIZE = dict(n=64, d_in=5, d_out=4)
LOOP = dict(epochs=3, batch_size=16, eval_every=1, device="cpu")


def bar_lines(err):
    """The tqdm updates written to stderr: one per redraw, each ending in \\r or a newline."""
    return [line for line in err.replace("\r", "\n").splitlines() if "epochs:" in line]


@pytest.mark.parametrize("progress", [True, False])
def test_train_shows_an_epoch_bar_only_when_asked(capsys, progress):
    X, y, _ = lc.make_regression(**SIZE, seed=0)
    base = lc.LoRALinear(lc.pretrain_base(X, y, progress=False, cache=False, **LOOP)[0], r=1)
    capsys.readouterr()
    lc.train(base, X, y, progress=progress, seed=0, **LOOP)
    lines = bar_lines(capsys.readouterr().err)
    if progress:
        assert any("0/3 [" in line for line in lines), lines
    else:
        assert lines == []


def test_pretraining_shows_its_bar_when_it_trains_and_none_when_loaded_from_the_cache(capsys, tmp_path):
    X, y, _ = lc.make_regression(**SIZE, seed=0)
    lc.pretrain_base(X, y, progress=True, cache_dir=tmp_path, **LOOP)
    assert any("0/3 [" in line for line in bar_lines(capsys.readouterr().err))
    _, history = lc.pretrain_base(X, y, progress=True, cache_dir=tmp_path, **LOOP)
    assert history.settings["from_cache"] and bar_lines(capsys.readouterr().err) == []


def test_transformer_pretraining_shows_its_bar(capsys, tmp_path):
    config = lc.TransformerConfig(vocab_size=8, seq_len=8, d_model=16, n_heads=2, n_layers=1, d_mlp=32)
    X, y = lc.make_sequences("previous", 64, seq_len=8, vocab_size=8, seed=0)
    lc.pretrain_transformer(
        X, y, config=config, epochs=2, batch_size=16, progress=True, cache_dir=tmp_path, device="cpu"
    )
    assert any("0/2 [" in line for line in bar_lines(capsys.readouterr().err))


@pytest.mark.parametrize("progress", [True, False])
def test_train_many_shows_an_epoch_bar_only_when_asked(capsys, progress):
    X, y, _ = lc.make_regression(**SIZE, seed=0)
    base = lc.pretrain_base(X, y, progress=False, cache=False, **LOOP)[0]
    capsys.readouterr()
    lc.train_many(base, X, y, [dict(r=1), dict(r=2)], progress=progress, **LOOP)
    assert bool(bar_lines(capsys.readouterr().err)) is progress
