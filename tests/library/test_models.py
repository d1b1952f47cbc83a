"""The small transformer: PEFT's layer names, seeding, causality, and LoRA inside it."""

import pytest
import torch
from torch.nn import functional as F

import lora_core as lc
from lora_core.walkthrough import WalkthroughWrapper, replay_outcome

CFG = lc.TransformerConfig(vocab_size=8, seq_len=8, d_model=16, n_heads=2, n_layers=2, d_mlp=32)


@pytest.fixture
def model():
    return lc.build_transformer(CFG, seed=0)


@pytest.fixture
def tokens():
    return torch.randint(CFG.vocab_size, (3, CFG.seq_len), generator=torch.Generator().manual_seed(0))


def test_linear_layers_carry_the_names_peft_users_target(model):
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    for i in range(CFG.n_layers):
        for proj in (
            "attn.q_proj",
            "attn.k_proj",
            "attn.v_proj",
            "attn.o_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        ):
            assert f"layers.{i}.{proj}" in linears
    assert "lm_head" in linears and len(linears) == 6 * CFG.n_layers + 1


def test_logits_have_one_row_per_position_and_token(model, tokens):
    assert model(tokens).shape == (3, CFG.seq_len, CFG.vocab_size)


def test_the_same_seed_gives_the_same_weights_and_another_does_not():
    a, b, c = (lc.build_transformer(CFG, seed=s) for s in (0, 0, 1))
    assert lc.weights_checksum(a) == lc.weights_checksum(b) != lc.weights_checksum(c)


def test_attention_is_causal(model, tokens):
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % CFG.vocab_size
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.equal(before[:, 5:], after[:, 5:])


def test_attention_matches_a_hand_written_causal_softmax(model, tokens):
    attn = model.layers[0].attn
    x = torch.randn(2, 6, CFG.d_model)
    hs = CFG.d_model // CFG.n_heads
    q, k, v = (
        p(x).view(2, 6, CFG.n_heads, hs).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj)
    )
    scores = q @ k.transpose(-1, -2) / hs**0.5
    scores = scores.masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    y = (F.softmax(scores, -1) @ v).transpose(1, 2).reshape(2, 6, CFG.d_model)
    torch.testing.assert_close(attn(x), attn.o_proj(y))


@pytest.mark.parametrize("placement", sorted(lc.PLACEMENTS))
def test_add_lora_at_initialisation_computes_exactly_the_base(model, tokens, placement):
    with torch.no_grad():
        expected = model(tokens)
    names = lc.add_lora(model, lc.PLACEMENTS[placement], r=4, lora_alpha=8)
    per_block = len([t for t in lc.PLACEMENTS[placement] if t != "lm_head"])
    assert len(names) == per_block * CFG.n_layers + ("lm_head" in lc.PLACEMENTS[placement])
    with torch.no_grad():
        assert torch.equal(model(tokens), expected)


def test_weights_checksum_sees_the_base_through_lora_layers(model):
    before = lc.weights_checksum(model)
    lc.add_lora(model, ["q_proj", "v_proj"], r=2)
    with torch.no_grad():
        model.layers[0].attn.q_proj.B.fill_(1.0)  # an adapter change is not a base change
    assert lc.weights_checksum(model) == before
    with torch.no_grad():
        model.layers[0].attn.q_proj.base.weight[0, 0] += 1e-6
    assert lc.weights_checksum(model) != before


def test_optimizer_state_is_two_moments_per_trainable_number(model):
    lc.add_lora(model, ["q_proj", "v_proj"], r=2)
    trainable, _ = lc.count_parameters(model)
    assert lc.optimizer_state_bytes(model) == 2 * 4 * trainable
    model.requires_grad_(True)
    assert lc.optimizer_state_bytes(model) == 2 * 4 * lc.count_parameters(model)[1]


def test_bad_sizes_are_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="n_heads=3 is not allowed"):
        lc.TransformerConfig(d_model=16, n_heads=3)
    with pytest.raises(ValueError, match="d_model=0 is not allowed"):
        lc.TransformerConfig(d_model=0)


def test_the_walkthrough_wrapper_refuses_dotted_names(model):
    with pytest.raises(KeyError, match="layers.0.attn.q_proj"):
        WalkthroughWrapper(model)


def test_the_walkthrough_replay_is_not_the_models_computation(model, tokens):
    assert replay_outcome(model, tokens).startswith("RuntimeError")
    # Even a flat chain is computed wrongly: the root runs first, then its children again.
    chain = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
    outcome = replay_outcome(chain, torch.randn(2, 4))
    assert outcome.startswith("max |difference|") and float(outcome.rsplit(": ", 1)[1]) > 0
