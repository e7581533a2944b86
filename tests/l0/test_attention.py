"""Attention rules: each fires on a bad snippet and stays quiet on the idiomatic fix."""

from __future__ import annotations

from l0helpers import findings, lines

# ---------------------------------------------------------------------------------------------- ATT001

MANUAL_ATTENTION = """
    import math
    import torch
    import torch.nn.functional as F

    class CausalSelfAttention(torch.nn.Module):
        def forward(self, x):
            q, k, v = self.qkv(x).split(self.n_embd, dim=2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v
            return self.c_proj(y)
"""


def test_att001_softmax_of_qk_times_v_through_locals() -> None:
    assert lines(MANUAL_ATTENTION, "ATT001") == [11]
    (finding,) = findings(MANUAL_ATTENTION, "ATT001")
    assert finding.severity == "error" and "scaled_dot_product_attention" in finding.message


def test_att001_one_liner_and_method_softmax() -> None:
    bad = """
        import torch

        def attend(q, k, v, scale):
            return (torch.matmul(q, k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v
    """
    assert lines(bad, "ATT001") == [5]


def test_att001_einsum_and_softmax_module() -> None:
    bad = """
        import torch
        from torch import nn

        class Attention(nn.Module):
            def __init__(self, dim):
                super().__init__()
                self.softmax = nn.Softmax(dim=-1)
                self.scale = dim ** -0.5

            def forward(self, q, k, v, mask):
                dots = torch.einsum("bhid,bhjd->bhij", q, k) * self.scale
                attn = self.softmax(dots + mask)
                return torch.einsum("bhij,bhjd->bhid", attn, v)
    """
    assert lines(bad, "ATT001") == [13]


def test_att001_quiet_on_sdpa() -> None:
    good = """
        import torch.nn.functional as F

        class CausalSelfAttention(torch.nn.Module):
            def forward(self, x):
                q, k, v = self.qkv(x).split(self.n_embd, dim=2)
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                   dropout_p=self.dropout if self.training else 0.0)
                return self.c_proj(y)
    """
    assert lines(good, "ATT001") == []


def test_att001_quiet_on_a_manual_fallback_next_to_sdpa() -> None:
    good = """
        import math
        import torch.nn.functional as F

        class CausalSelfAttention(torch.nn.Module):
            def forward(self, q, k, v):
                if self.flash:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
                att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
                att = F.softmax(att, dim=-1)
                return att @ v
    """
    assert lines(good, "ATT001") == []


def test_att001_quiet_on_a_reference_implementation() -> None:
    # Tests compare the kernels against a math reference; that one is manual on purpose.
    good = """
        import torch

        def naive_attention(q, k, v):
            return torch.softmax(q @ k.transpose(-2, -1) / q.size(-1) ** 0.5, dim=-1) @ v

        def attention_ref(q, k, v):
            return torch.softmax(q @ k.mT, dim=-1) @ v
    """
    assert lines(good, "ATT001") == []


def test_att001_quiet_when_the_weights_are_returned() -> None:
    # `output_attentions`: the caller needs the probabilities, which SDPA cannot give.
    good = """
        import torch

        def eager_attention(q, k, v):
            weights = torch.matmul(q, k.transpose(2, 3)) / 8.0
            weights = torch.nn.functional.softmax(weights, dim=-1)
            out = torch.matmul(weights, v)
            return out, weights
    """
    assert lines(good, "ATT001") == []


def test_att001_quiet_on_softmax_that_is_not_attention() -> None:
    good = """
        import torch.nn.functional as F

        def step(model, x, y, proj):
            logits = model(x) @ proj.T
            probs = F.softmax(logits, dim=-1)        # a classifier: no product with V afterwards
            loss = F.nll_loss(probs.log(), y)
            gate = F.softmax(x @ proj, dim=-1) @ x   # mixture weights, no transpose: not QK^T
            return loss, gate
    """
    assert lines(good, "ATT001") == []


# ---------------------------------------------------------------------------------------------- ATT002

def test_att002_weights_discarded_with_default_need_weights() -> None:
    bad = """
        from torch import nn

        class Block(nn.Module):
            def __init__(self, d, h):
                super().__init__()
                self.attn = nn.MultiheadAttention(d, h, batch_first=True)

            def forward(self, x):
                x = x + self.attn(x, x, x)[0]
                out, _ = self.attn(x, x, x, need_weights=True)
                return out
    """
    assert lines(bad, "ATT002") == [10, 11]


def test_att002_quiet_with_need_weights_false() -> None:
    good = """
        from torch import nn

        class Block(nn.Module):
            def __init__(self, d, h):
                super().__init__()
                self.attn = nn.MultiheadAttention(d, h, batch_first=True)

            def forward(self, x):
                return x + self.attn(x, x, x, need_weights=False)[0]
    """
    assert lines(good, "ATT002") == []


def test_att002_quiet_when_the_weights_are_used() -> None:
    good = """
        from torch import nn

        class Block(nn.Module):
            def __init__(self, d, h):
                super().__init__()
                self.attn = nn.MultiheadAttention(d, h)

            def forward(self, x):
                out, weights = self.attn(x, x, x)
                self.last_weights = weights.detach()
                return out
    """
    assert lines(good, "ATT002") == []


def test_att002_quiet_on_instances_not_tied_to_multihead_attention() -> None:
    # `self.attn` is some other module here; and the MHA lives in another class.
    good = """
        from torch import nn

        class Other(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(64, 4)

        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = MyAttention(64)

            def forward(self, x):
                return self.attn(x, x, x)[0]
    """
    assert lines(good, "ATT002") == []


# ---------------------------------------------------------------------------------------------- ATT003

def test_att003_tril_mask_into_sdpa_through_a_variable() -> None:
    bad = """
        import torch
        import torch.nn.functional as F

        def attend(q, k, v):
            T = q.size(-2)
            mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    """
    assert lines(bad, "ATT003") == [8]


def test_att003_registered_buffer_sliced() -> None:
    bad = """
        import torch
        from torch.nn.functional import scaled_dot_product_attention

        class Attn(torch.nn.Module):
            def __init__(self, n):
                super().__init__()
                self.register_buffer("mask", torch.ones(n, n).tril().view(1, 1, n, n).bool())

            def forward(self, q, k, v):
                T = q.size(-2)
                return scaled_dot_product_attention(q, k, v, self.mask[:, :, :T, :T])
    """
    assert lines(bad, "ATT003") == [12]


def test_att003_multihead_attention_with_square_subsequent_mask() -> None:
    bad = """
        from torch import nn

        class Decoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(512, 8, batch_first=True)

            def forward(self, x):
                mask = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device)
                return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]
    """
    assert lines(bad, "ATT003") == [11]
    assert lines(bad, "ATT002") == []


def test_att003_transformer_encoder_with_a_causal_mask_but_no_flag() -> None:
    bad = """
        import torch
        from torch import nn

        class LM(nn.Module):
            def __init__(self, d):
                super().__init__()
                layer = nn.TransformerEncoderLayer(d, 8, batch_first=True)
                self.encoder = nn.TransformerEncoder(layer, 6)

            def forward(self, h):
                T = h.size(1)
                h = self.encoder(h, mask=nn.Transformer.generate_square_subsequent_mask(T, device=h.device))
                causal = torch.triu(torch.full((T, T), float("-inf"), device=h.device), diagonal=1)
                return self.encoder(h, causal, is_causal=True)
    """
    assert lines(bad, "ATT003") == [13]
    (finding,) = findings(bad, "ATT003")
    assert "is_causal=True" in finding.message


def test_att003_quiet_with_is_causal() -> None:
    good = """
        import torch.nn.functional as F
        from torch import nn

        class Decoder(nn.Module):
            def __init__(self):
                super().__init__()
                self.attn = nn.MultiheadAttention(512, 8, batch_first=True)

            def forward(self, x, q, k, v):
                mask = nn.Transformer.generate_square_subsequent_mask(x.size(1), device=x.device)
                y = self.attn(x, x, x, attn_mask=mask, need_weights=False, is_causal=True)[0]
                return y + F.scaled_dot_product_attention(q, k, v, is_causal=True)
    """
    assert lines(good, "ATT003") == []


def test_att003_quiet_when_the_mask_is_a_parameter_shadowing_a_global() -> None:
    good = """
        import torch
        import torch.nn.functional as F
        mask = torch.tril(torch.ones(8, 8, dtype=torch.bool))

        def attend(q, k, v, mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    """
    assert lines(good, "ATT003") == []
    assert lines(good.replace(", mask):", "):"), "ATT003") == [7]


def test_att003_quiet_when_padding_is_mixed_in_or_the_window_is_offset() -> None:
    # is_causal=True cannot express a padding mask, nor a KV-cache window that starts at `past`.
    good = """
        import torch
        import torch.nn.functional as F

        def attend(q, k, v, pad, past):
            T = q.size(-2)
            causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal & pad[:, None, None, :])
            window = self_bias[past:past + T, :past + T]
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=torch.tril(full)[past:past + T])
            return y, z, window
    """
    assert lines(good, "ATT003") == []
