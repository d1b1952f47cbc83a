"""A small decoder-style transformer to put LoRA inside: attention, residuals and an MLP.

The layout is the one PEFT users target by name (GPT-2/Llama style, pre-norm):

    tok_emb + pos_emb -> layers.{i}: x + attn(norm1(x)), then x + mlp(norm2(x)) -> norm -> lm_head

with ``attn.q_proj``, ``attn.k_proj``, ``attn.v_proj``, ``attn.o_proj`` and ``mlp.up_proj``,
``mlp.down_proj`` as separate ``nn.Linear`` layers, so ``target_modules=["q_proj", "v_proj"]``
means here what it means for a Llama. Attention is causal: position t sees positions ≤ t.
Plain PyTorch, seeded by the caller, about 70k parameters at the default size.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .validation import check_int

# The LoRA placements notebook 05 compares, as PEFT target_modules lists.
PLACEMENTS = {
    "q_v": ["q_proj", "v_proj"],  # Hu et al.'s choice for GPT-3
    "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mlp": ["up_proj", "down_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "lm_head"],
}


@dataclass(frozen=True)
class TransformerConfig:
    """The model's sizes; the defaults train to ≥ 95% on the sequence tasks in seconds."""

    vocab_size: int = 16  # tokens 0 .. vocab_size - 1
    seq_len: int = 16  # longest sequence: rows of the position embedding
    d_model: int = 64  # width of the residual stream
    n_heads: int = 4  # attention heads; d_model must be a multiple
    n_layers: int = 2  # transformer blocks
    d_mlp: int = 128  # hidden width of each block's MLP

    def __post_init__(self):
        for name in ("vocab_size", "seq_len", "d_model", "n_heads", "n_layers", "d_mlp"):
            check_int(name, getattr(self, name), 1)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"n_heads={self.n_heads} is not allowed: expected a divisor of d_model={self.d_model}"
            )


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q, k, v and output projections."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def heads(h: torch.Tensor) -> torch.Tensor:
            return h.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)  # (b, nh, t, hs)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (b, nh, t, hs)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_mlp)
        self.down_proj = nn.Linear(cfg.d_mlp, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.gelu(self.up_proj(x)))


class Block(nn.Module):
    """Pre-norm residual block: the residual stream is only ever added to."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyTransformer(nn.Module):
    """Token ids (batch, t) -> next-token logits (batch, t, vocab_size)."""

    def __init__(self, cfg: TransformerConfig | None = None):
        super().__init__()
        self.config = cfg or TransformerConfig()
        cfg = self.config
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        if t > self.config.seq_len:
            raise ValueError(
                f"tokens.shape={tuple(tokens.shape)} is not allowed: at most {self.config.seq_len} positions"
            )
        x = self.tok_emb(tokens) + self.pos_emb(torch.arange(t, device=tokens.device))
        for block in self.layers:
            x = block(x)
        return self.lm_head(self.norm(x))


def build_transformer(cfg: TransformerConfig | None = None, seed: int = 0) -> TinyTransformer:
    """A freshly initialised model; the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(check_int("seed", seed, 0, 2**32 - 1))
        return TinyTransformer(cfg)


def config_dict(cfg: TransformerConfig) -> dict:
    return asdict(cfg)


# ---------------------------------------------------------------------------------------
# Measuring a model: what LoRA saves


def weights_checksum(model: nn.Module, exclude_lora: bool = True) -> str:
    """SHA-256 of every parameter's bytes, by name: equal digests mean bit-identical weights.

    With ``exclude_lora`` the adapters' A, B and scale are left out, so the digest is the
    frozen base's whether or not LoRA layers are in it (``x.base.weight`` counts as
    ``x.weight``).
    """
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        leaf = name.rsplit(".", 1)[-1]
        if exclude_lora and leaf in ("A", "B", "scale"):
            continue
        digest.update(name.replace(".base.", ".").encode())
        digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def optimizer_state_bytes(model: nn.Module, optimizer: str = "adamw", lr: float = 1e-3) -> int:
    """Bytes of optimizer state for the model's trainable parameters, measured after one step.

    Adam and AdamW keep two moments per trainable number; the step runs on a copy of the
    gradients' shapes (zeros), so the model is not changed.
    """
    from .training import make_optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    shadows = [torch.zeros_like(p, requires_grad=True) for p in params]
    opt = make_optimizer(optimizer, shadows, lr)
    for s in shadows:
        s.grad = torch.zeros_like(s)
    opt.step()
    return sum(
        t.numel() * t.element_size()
        for state in opt.state.values()
        for t in state.values()
        if isinstance(t, torch.Tensor) and t.ndim > 0
    )
