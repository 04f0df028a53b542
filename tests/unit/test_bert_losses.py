"""BERT-style losses against naive references written from the papers' definitions (loops, no shared code)."""

from __future__ import annotations

import math

import pytest
import torch

from llmdistill.bert import layer_map
from llmdistill.bert import losses as L

torch.manual_seed(0)


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q) if a > 0)


def test_logit_kd_matches_definition_with_temperature_and_alpha():
    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, -100, 1])
    temp, alpha = 2.0, 0.3
    soft = sum(_kl(_softmax((t[i] / temp).tolist()), _softmax((s[i] / temp).tolist())) for i in range(4)) / 4
    ce = [-math.log(_softmax(s[i].tolist())[y[i]]) for i in (0, 1, 3)]
    want = alpha * temp**2 * soft + (1 - alpha) * sum(ce) / 3
    assert L.logit_kd(s, t, y, temp, alpha).item() == pytest.approx(want, rel=1e-10)
    assert L.logit_kd(t, t, None, temp, 1.0).item() == pytest.approx(0.0, abs=1e-12)


def test_cross_entropy_with_no_label_is_zero_and_differentiable():
    s = torch.randn(2, 3, requires_grad=True)
    loss = L.cross_entropy(s, torch.tensor([-100, -100]))
    loss.backward()
    assert loss.item() == 0.0 and s.grad is not None


def test_hidden_mse_and_cosine_ignore_padding():
    s, t = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    real = [(0, 0), (0, 1), (1, 0)]
    mse = sum(((s[b, i] - t[b, i]) ** 2).sum().item() for b, i in real) / (len(real) * 4)
    assert L.hidden_mse(s, t, mask).item() == pytest.approx(mse, rel=1e-10)
    cos = sum(1 - (s[b, i] @ t[b, i]).item() / (s[b, i].norm() * t[b, i].norm()).item() for b, i in real) / 3
    assert L.hidden_cosine(s, t, mask).item() == pytest.approx(cos, rel=1e-10)
    # changing a padded position changes nothing
    s2 = s.clone()
    s2[1, 2] += 100
    assert L.hidden_mse(s2, t, mask).item() == pytest.approx(mse, rel=1e-10)


def _attn(b, a, t):
    return torch.softmax(torch.randn(b, a, t, t, dtype=torch.float64), -1)


def test_attention_mse_over_real_pairs_and_head_grouping():
    s, t = _attn(2, 2, 3), _attn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    tg = torch.stack([t[:, 0:2].mean(1), t[:, 2:4].mean(1)], 1)  # 4 teacher heads -> 2 groups
    total, n = 0.0, 0
    for b in range(2):
        for h in range(2):
            for i in range(3):
                for j in range(3):
                    if mask[b, i] and mask[b, j]:
                        total += (s[b, h, i, j] - tg[b, h, i, j]).item() ** 2
                        n += 1
    assert L.attention_mse(s, t, mask).item() == pytest.approx(total / n, rel=1e-10)
    with pytest.raises(ValueError):
        L.group_heads(_attn(1, 3, 2), 2)


def test_pkd_normalised_cls_mse():
    s = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    t = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    want = 0.0
    for a, b in zip(s, t):
        for i in range(3):
            want += sum((x / a[i].norm().item() - y / b[i].norm().item()) ** 2
                        for x, y in zip(a[i].tolist(), b[i].tolist())) / 3
    assert L.pkd(s, t).item() == pytest.approx(want, rel=1e-10)
    assert L.pkd([t[0] * 5], [t[0]]).item() == pytest.approx(0.0, abs=1e-12)  # scale-free


def test_distilbert_triple_is_the_weighted_sum_of_its_parts():
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    hs, ht = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    mask = torch.ones(2, 3)
    mlm = torch.tensor(1.5, dtype=torch.float64)
    got = L.distilbert_triple(mlm, s, t, hs, ht, mask, temperature=2.0, weights=(0.5, 2.0, 1.0))
    soft = sum(_kl(_softmax((t[i] / 2).tolist()), _softmax((s[i] / 2).tolist())) for i in range(5)) / 5 * 4
    want = 0.5 * 1.5 + 2.0 * soft + L.hidden_cosine(hs, ht, mask).item()
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_attention_kl_per_head_and_real_query():
    s, t = _attn(1, 2, 3), _attn(1, 2, 3)
    mask = torch.tensor([[1, 1, 0]])
    want = sum(_kl(t[0, h, i].tolist(), s[0, h, i].tolist()) for h in range(2) for i in range(2)) / 4
    assert L.attention_kl(s, t, mask).item() == pytest.approx(want, rel=1e-9)


def _relation(x, heads, mask_row):
    """softmax over real keys of x_i . x_j / sqrt(d) per head, by loops: [T, H] -> heads x T x T lists."""
    t, h = x.shape
    d = h // heads
    out = []
    for a in range(heads):
        xa = x[:, a * d:(a + 1) * d]
        rows = []
        for i in range(t):
            scores = [(xa[i] @ xa[j]).item() / math.sqrt(d) for j in range(t) if mask_row[j]]
            probs = _softmax(scores)
            full, k = [], 0
            for j in range(t):
                if mask_row[j]:
                    full.append(probs[k])
                    k += 1
                else:
                    full.append(0.0)
            rows.append(full)
        out.append(rows)
    return out


def test_relation_kl_matches_minilm_definition_with_different_widths():
    s, t = torch.randn(1, 3, 4, dtype=torch.float64), torch.randn(1, 3, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])
    rs, rt = _relation(s[0], 2, [1, 1, 0]), _relation(t[0], 2, [1, 1, 0])
    want = sum(_kl(rt[h][i], rs[h][i]) for h in range(2) for i in range(2)) / 4
    assert L.relation_kl(s, t, mask, heads=2).item() == pytest.approx(want, rel=1e-6)
    with pytest.raises(ValueError):
        L.relation_kl(s, t, mask, heads=3)


def test_minilmv2_sums_qq_kk_vv():
    mask = torch.ones(2, 3)
    sq = tuple(torch.randn(2, 3, 4, dtype=torch.float64) for _ in range(3))
    tq = tuple(torch.randn(2, 3, 8, dtype=torch.float64) for _ in range(3))
    want = sum(L.relation_kl(a, b, mask, 2) for a, b in zip(sq, tq))
    assert L.minilmv2(sq, tq, mask, 2).item() == pytest.approx(want.item(), rel=1e-12)
    assert L.minilmv2(tq, tq, mask, 4).item() == pytest.approx(0.0, abs=1e-10)


def _huber(a, b):
    d = abs(a - b)
    return 0.5 * d * d if d < 1 else d - 0.5


def test_rkd_distance_and_angle_from_definition():
    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)

    def dist(x):
        d = [[(x[i] - x[j]).norm().item() for j in range(4)] for i in range(4)]
        mu = sum(d[i][j] for i in range(4) for j in range(4) if i != j) / 12
        return [[v / mu for v in row] for row in d]

    ds, dt = dist(s), dist(t)
    want = sum(_huber(ds[i][j], dt[i][j]) for i in range(4) for j in range(4)) / 16
    assert L.rkd_distance(s, t).item() == pytest.approx(want, rel=1e-5)

    def angle(x, j, i, k):
        a, b = x[i] - x[j], x[k] - x[j]
        na, nb = a.norm().item(), b.norm().item()
        return 0.0 if na == 0 or nb == 0 else (a @ b).item() / (na * nb)

    want = sum(_huber(angle(s, j, i, k), angle(t, j, i, k)) for i in range(4) for j in range(4) for k in range(4))
    assert L.rkd_angle(s, t).item() == pytest.approx(want / 64, rel=1e-6)
    # relations are invariant to scale, so a scaled copy of the teacher has zero distance loss
    assert L.rkd_distance(3 * t, t).item() == pytest.approx(0.0, abs=1e-10)


def test_losses_have_gradients():
    s = torch.randn(3, 4, requires_grad=True)
    t = torch.randn(3, 6)
    (L.rkd_distance(s, t) + L.rkd_angle(s, t)).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("strategy,ls,lt,want", [
    ("uniform", 2, 6, [(1, 3), (2, 6)]),
    ("uniform", 3, 12, [(1, 4), (2, 8), (3, 12)]),
    ("skip", 2, 6, [(1, 2), (2, 4)]),
    ("skip", 3, 12, [(1, 3), (2, 6), (3, 9)]),
    ("last", 2, 6, [(1, 4), (2, 5)]),
    ("last", 6, 12, [(1, 6), (2, 7), (3, 8), (4, 9), (5, 10), (6, 11)]),
    ("skip", 6, 6, [(i, i) for i in range(1, 7)]),  # no room below the top: uniform
])
def test_layer_map_strategies(strategy, ls, lt, want):
    assert layer_map.resolve(strategy, ls, lt) == want


def test_layer_map_pairs_checked():
    assert layer_map.resolve("pairs", 2, 6, [(0, 0), (2, 5)]) == [(0, 0), (2, 5)]
    from llmdistill.errors import UserError

    with pytest.raises(UserError, match="out of range"):
        layer_map.resolve("pairs", 2, 6, [(3, 5)])
    assert layer_map.alternate_layers(6) == [2, 4, 6]
