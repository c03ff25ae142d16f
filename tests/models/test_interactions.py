"""Each interaction architecture: parameter count worked out by hand from the paper's formula,
and (where cheap) its output against an explicit, loop-by-loop evaluation of the same formula."""

from __future__ import annotations

import itertools

import pytest
import torch

from mlet.models import DCN, DLRM, XDeepFM
from mlet.models.autoint import AutoInt, SelfAttentionLayer
from mlet.models.dcn import CrossLayer, CrossNet
from mlet.models.dcnv2 import CrossLayerV2, CrossNetMix
from mlet.models.fibinet import SENET, BilinearInteraction
from mlet.models.layers import DenseField, DotInteraction, FirstOrder, FMInteraction
from mlet.models.xdeepfm import CIN


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- parameter counts ------------------------------------------------------------------------
# A small shared setting: F = 3 fields, d = 2, D = 4 dense features.
F_, d, D = 3, 2, 4
D0 = F_ * d + D  # = 10, the cross networks' input width


def test_cross_layer_count():
    # DCN: each layer has w and b in R^{D0}: L (2 D0) = 2 * 20 = 40 for L = 2.
    assert count(CrossNet(D0, 2)) == 2 * (2 * 10) == 40


def test_dcn_count():
    # cross 40 + deep Linear(10 -> 5) 10*5+5 = 55 + over Linear(10 + 5 -> 1) 15+1 = 16.
    model = DCN(F_, d, D, cross_layers=2, hidden=[5], dropout=0.0)
    assert count(model.cross_arch) == 40
    assert count(model) == 40 + 55 + 16 == 111


def test_dcnv2_full_rank_count():
    # W in R^{D0 x D0} and b in R^{D0} per layer: L (D0^2 + D0) = 2 * (100 + 10) = 220.
    assert count(CrossNet(D0, 2, layer=CrossLayerV2)) == 2 * (10 * 10 + 10) == 220


def test_dcnv2_low_rank_mixture_count():
    # Per layer and expert: U, V in R^{D0 x r}, C in R^{r x r}; per layer one bias b in R^{D0};
    # gates g_i in R^{D0} shared by the layers. L = 2, E = 3, r = 2:
    # L (E (2 D0 r + r^2) + D0) + E D0 = 2 (3 (40 + 4) + 10) + 30 = 2 * 142 + 30 = 314.
    assert count(CrossNetMix(D0, 2, low_rank=2, num_experts=3)) == 2 * (3 * (2 * 10 * 2 + 2 * 2) + 10) + 3 * 10 == 314


def test_self_attention_count():
    # W_Q, W_K, W_V: in x A each, plus W_res (in x A) when in != A. d = 3 -> A = 4, then 4 -> 4:
    # layer 1: 3 * 3 * 4 + 3 * 4 = 48; layer 2: 3 * 4 * 4 = 48 (identity residual).
    assert count(SelfAttentionLayer(3, 4, num_heads=2)) == 3 * 3 * 4 + 3 * 4 == 48
    assert count(SelfAttentionLayer(4, 4, num_heads=2)) == 3 * 4 * 4 == 48
    # AutoInt, F = 3, D = 4 (one dense field: 4 x 3), 2 layers, no wide, no DNN:
    # dense field 12 + attention 96 + output Linear(4 fields * 4 -> 1) 17 = 125.
    model = AutoInt(3, 3, 4, attention_layers=2, num_heads=2, attention_dim=4, use_wide=False, hidden=[])
    assert count(model) == 4 * 3 + 48 + 48 + (4 * 4 + 1) == 125


def test_cin_count():
    # m = 3 fields (2 embedded + the dense field), H = [4, 2], H_0 = m:
    # layer 1: m H_0 H_1 + H_1 = 3*3*4 + 4 = 40; layer 2: m H_1 H_2 + H_2 = 3*4*2 + 2 = 26.
    assert count(CIN(3, [4, 2])) == 40 + 26 == 66
    # xDeepFM F = 2, d = 2, D = 4, no DNN: first order 2*2+4 = 8 (no bias) + dense field 4*2 = 8
    # + CIN 66 + output Linear(4 + 2 -> 1) = 7.
    model = XDeepFM(2, 2, 4, cin_layer_units=[4, 2], hidden=[])
    assert count(model) == 8 + 8 + 66 + 7 == 89


@pytest.mark.parametrize(
    "bilinear_type,expected",
    [
        ("field_all", 3 * 3),  # one d x d matrix
        ("field_each", (4 - 1) * 3 * 3),  # one per field that is the left member of a pair: m - 1
        ("field_interaction", (4 * 3 // 2) * 3 * 3),  # one per pair: m (m - 1) / 2 = 6
    ],
)
def test_bilinear_count(bilinear_type, expected):
    assert count(BilinearInteraction(4, 3, bilinear_type)) == expected


def test_senet_count():
    # W_1 in R^{r x m}, W_2 in R^{m x r}, r = max(1, floor(m / ratio)): m = 7, ratio 3 -> r = 2:
    # 2 * 7 * 2 = 28; ratio 12 -> r = max(1, 0) = 1: 14.
    assert count(SENET(7, 3)) == 2 * 7 * 2 == 28
    assert count(SENET(7, 12)) == 2 * 7 * 1 == 14


def test_fm_term_dense_field_and_first_order_counts():
    assert count(FMInteraction()) == 0  # <v_i, v_j> has no weights of its own
    assert count(DenseField(D, d)) == D * d == 8  # W in R^{d x D}, no bias
    assert count(DenseField(0, d)) == 0
    assert count(FirstOrder(F_, d, D)) == F_ * d + D + 1 == 11


def test_dlrm_dot_count():
    assert count(DotInteraction(5)) == 0
    # DLRM F = 3, d = 2, D = 4, bottom [5], top [7]:
    # bottom Linear(4 -> 5) 25 + Linear(5 -> d) 12; n = F + 1 = 4 vectors -> 6 pairs;
    # top input 6 + d = 8: Linear(8 -> 7) 63 + Linear(7 -> 1) 8.
    model = DLRM(F_, d, D, bottom_mlp=[5], top_mlp=[7])
    assert model.interaction_arch.out_features == 4 * 3 // 2 == 6
    assert count(model) == 25 + 12 + 63 + 8 == 108


# ---- numerical checks against explicit formulas --------------------------------------------
B = 5


def test_fm_term_equals_pairwise_sum():
    v = torch.randn(B, 4, 3, dtype=torch.float64)
    explicit = sum((v[:, i] * v[:, j]).sum(-1) for i, j in itertools.combinations(range(4), 2))
    torch.testing.assert_close(FMInteraction()(v), explicit)


def test_dot_interaction_equals_pairwise_dots():
    v = torch.randn(B, 4, 3, dtype=torch.float64)
    out = DotInteraction(4)(v)
    pairs = [(i, j) for i in range(4) for j in range(i)]  # strictly lower triangle, row-major
    explicit = torch.stack([(v[:, i] * v[:, j]).sum(-1) for i, j in pairs], dim=1)
    torch.testing.assert_close(out, explicit)


def test_cross_layer_equals_formula():
    layer = CrossLayer(6).double()
    torch.nn.init.normal_(layer.bias)
    x0, xl = torch.randn(B, 6, dtype=torch.float64), torch.randn(B, 6, dtype=torch.float64)
    w = layer.weight.weight.reshape(6, 1)
    # x_{l+1} = x0 x_l^T w + b + x_l, with the outer product written out
    explicit = (x0.unsqueeze(2) @ xl.unsqueeze(1) @ w).squeeze(-1) + layer.bias + xl
    torch.testing.assert_close(layer(x0, xl), explicit)


def test_cross_layer_v2_equals_formula():
    layer = CrossLayerV2(6).double()
    x0, xl = torch.randn(B, 6, dtype=torch.float64), torch.randn(B, 6, dtype=torch.float64)
    explicit = x0 * (xl @ layer.linear.weight.T + layer.linear.bias) + xl
    torch.testing.assert_close(layer(x0, xl), explicit)


def test_mixture_cross_net_equals_formula():
    net = CrossNetMix(6, 2, low_rank=3, num_experts=2).double()
    for layer in net.layers:
        torch.nn.init.normal_(layer.bias)
    x0 = torch.randn(B, 6, dtype=torch.float64)
    x = x0
    for layer in net.layers:
        gates = torch.softmax(x @ net.gate.weight.T, dim=-1)  # [B, E]
        mixed = torch.zeros_like(x)
        for i in range(2):  # expert i: x0 * (U_i tanh(C_i tanh(V_i^T x)) + b)
            v = torch.tanh(x @ layer.V[i])
            v = torch.tanh(v @ layer.C[i].T)
            mixed = mixed + gates[:, i : i + 1] * (x0 * (v @ layer.U[i].T + layer.bias))
        x = mixed + x
    torch.testing.assert_close(net(x0), x)


@pytest.mark.parametrize("bilinear_type", ["field_all", "field_each", "field_interaction"])
def test_bilinear_equals_pairwise_formula(bilinear_type):
    m, dim = 4, 3
    layer = BilinearInteraction(m, dim, bilinear_type).double()
    v = torch.randn(B, m, dim, dtype=torch.float64)
    expected = []
    for p, (i, j) in enumerate(itertools.combinations(range(m), 2)):
        if bilinear_type == "field_all":
            w = layer.weight  # shared by all pairs
        elif bilinear_type == "field_each":
            w = layer.weight[i]  # the left field's matrix
        else:
            w = layer.weight[p]  # the pair's matrix
        expected.append((v[:, i] @ w) * v[:, j])
    torch.testing.assert_close(layer(v), torch.stack(expected, dim=1))


def test_senet_equals_formula():
    senet = SENET(5, 2).double()
    e = torch.randn(B, 5, 3, dtype=torch.float64)
    w1, w2 = senet.excitation[0].weight, senet.excitation[2].weight
    a = torch.relu(torch.relu(e.mean(-1) @ w1.T) @ w2.T)
    torch.testing.assert_close(senet(e), e * a.unsqueeze(-1))


def test_cin_equals_formula():
    m, dim, units = 3, 4, [2, 3]
    cin = CIN(m, units).double()
    x0 = torch.randn(B, m, dim, dtype=torch.float64)
    pooled, prev = [], x0
    for layer, h_k in zip(cin.layers, units):
        h_prev = prev.shape[1]
        w = layer.weight.reshape(h_k, h_prev, m)  # W^{k,h}_{ij}: i over X^{k-1}, j over X^0
        nxt = torch.zeros(B, h_k, dim, dtype=torch.float64)
        for h in range(h_k):
            for i in range(h_prev):
                for j in range(m):
                    nxt[:, h] += w[h, i, j] * prev[:, i] * x0[:, j]
            nxt[:, h] += layer.bias[h]
        pooled.append(nxt.sum(-1))
        prev = nxt
    torch.testing.assert_close(cin(x0), torch.cat(pooled, dim=1))


@pytest.mark.parametrize("num_heads,use_scale", [(1, False), (2, True)])
def test_self_attention_equals_formula(num_heads, use_scale):
    n, dim, att = 4, 3, 4
    layer = SelfAttentionLayer(dim, att, num_heads=num_heads, use_scale=use_scale).double().eval()
    x = torch.randn(B, n, dim, dtype=torch.float64)
    q, k, v = x @ layer.query.weight.T, x @ layer.key.weight.T, x @ layer.value.weight.T
    hd = att // num_heads
    heads = []
    for h in range(num_heads):
        s = slice(h * hd, (h + 1) * hd)
        scores = q[..., s] @ k[..., s].transpose(1, 2) / (hd**0.5 if use_scale else 1.0)
        heads.append(torch.softmax(scores, dim=-1) @ v[..., s])  # alpha_{ij} over fields j
    explicit = torch.relu(torch.cat(heads, dim=-1) + x @ layer.residual.weight.T)
    torch.testing.assert_close(layer(x), explicit)


def test_dense_field_joins_the_fields():
    field = DenseField(4, 3).double()
    e, x = torch.randn(B, 2, 3, dtype=torch.float64), torch.randn(B, 4, dtype=torch.float64)
    out = field(e, x)
    assert out.shape == (B, 3, 3)
    torch.testing.assert_close(out[:, :2], e)
    torch.testing.assert_close(out[:, 2], x @ field.proj.weight.T)


# ---- first-order weights from a table of their own (first_order: table) ----------------------
def test_first_order_table_adds_each_categorys_weight_the_dense_term_and_the_bias():
    from mlet.models.layers import FirstOrder

    layer = FirstOrder(num_fields=2, embed_dim=3, num_dense=1, bias=True, source="table")
    with torch.no_grad():
        layer.linear.weight.fill_(2.0)
        layer.linear.bias.fill_(0.5)
    weights = torch.tensor([[1.0, 10.0], [-1.0, 0.25]])
    dense = torch.tensor([[3.0], [0.0]])
    out = layer(torch.randn(2, 2, 3), dense, weights)
    torch.testing.assert_close(out, torch.tensor([1 + 10 + 2 * 3 + 0.5, -1 + 0.25 + 0 + 0.5]))
    with pytest.raises(ValueError, match="category_weights"):
        layer(torch.randn(2, 2, 3), dense)
    with pytest.raises(ValueError, match="model.first_order must be one of table, embedding"):
        FirstOrder(2, 3, source="both")


def test_ctrnet_looks_up_one_first_order_weight_per_category_and_keeps_it_when_deployed():
    from mlet.embeddings import MLETEmbedding
    from mlet.models.lr import LR
    from mlet.module import CTRNet

    cards = [3, 4]
    net = CTRNet(MLETEmbedding(cards, 2, inner_dim=4), LR(2, 2, 0, first_order="table"))
    assert net.first_order is not None and net.first_order.dim == 1 and net.first_order.total_rows == 7
    with torch.no_grad():
        net.first_order.table.weight.copy_(torch.arange(7.0).unsqueeze(1))  # field 0: 0, 1, 2; field 1: 3..6
        net.model.linear_arch.bias.zero_()
    cat = torch.tensor([[0, 0], [2, 3]])
    torch.testing.assert_close(net(torch.zeros(2, 0), cat), torch.tensor([0.0 + 3.0, 2.0 + 6.0]))
    deployed = net.deployed()
    assert deployed.first_order is net.first_order and deployed.embedding is not net.embedding
    torch.testing.assert_close(deployed(torch.zeros(2, 0), cat), net(torch.zeros(2, 0), cat))
    # the weights table is a per-category table: it goes with the embedding tables to the sparse optimiser
    assert any(p is net.first_order.table.weight for p in net.sparse_parameters())
    # a model with first_order: embedding gets no table
    assert CTRNet(MLETEmbedding(cards, 2, inner_dim=4), LR(2, 2, 0)).first_order is None
