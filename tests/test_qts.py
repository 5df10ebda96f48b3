"""reprolib.qts: RDHS and SGT against hand-computed gradients, autograd and the Gumbel-max law."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import softmax
from torch import nn

from reprolib.models import build_model
from reprolib.nn import Precision, quantize_model, quantized_layers, set_precision
from reprolib.qts import (
    VALUE_SETS,
    ChoiceTracker,
    SearchConv2d,
    SearchFactory,
    SearchLinear,
    SearchSchedule,
    measure_selection_cost,
    measure_training_cost,
    rdhs_select,
    resolve_values,
    search_layers,
    set_search_options,
    sgt_select,
    value_fractions,
)

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3)
bit_widths = st.sampled_from(sorted(VALUE_SETS))


def test_value_sets_are_the_papers():
    assert VALUE_SETS[1] == (-1.0, 1.0)
    assert VALUE_SETS[2] == (-1.0, -0.5, 0.5, 1.0)
    assert VALUE_SETS[3] == tuple(sorted(s * 2.0**-e for s in (-1, 1) for e in range(4)))
    for vals in VALUE_SETS.values():  # multiplication-free: every value is ± a power of two
        assert all(math.log2(abs(v)).is_integer() for v in vals)


@pytest.mark.parametrize("bad,exc", [(4, ValueError), ((1.0,), ValueError), ((1.0, -1.0), ValueError),
                                     ((0.0, 0.0), ValueError), ((0.0, math.inf), ValueError), (True, TypeError)])
def test_resolve_values_rejects(bad, exc):
    with pytest.raises(exc, match="values"):
        resolve_values(bad)


def test_rdhs_gradient_by_hand():
    # α = [0, log 3] → π = [1/4, 3/4]; Σπq = 1/2; ∂w/∂α_k = π_k (q_k − 1/2) / τ.
    alpha = torch.tensor([0.0, math.log(3.0)], requires_grad=True)
    w = rdhs_select(alpha, (-1.0, 1.0))
    assert w.item() == 1.0
    w.backward()
    torch.testing.assert_close(alpha.grad, torch.tensor([-0.375, 0.375]))
    # τ = 1/2: π = softmax([0, 2 log 3]) = [1/10, 9/10]; Σπq = 0.8; ∂w/∂α = 2·[0.1·(−1.8), 0.9·0.2].
    alpha.grad = None
    (3.0 * rdhs_select(alpha, (-1.0, 1.0), tau=0.5)).backward()
    torch.testing.assert_close(alpha.grad, 3.0 * torch.tensor([-0.36, 0.36]))


def test_sgt_gradient_by_hand():
    alpha = torch.tensor([0.1, 0.5, 0.2, 0.3], requires_grad=True)
    w = sgt_select(alpha, VALUE_SETS[2])
    assert w.item() == -0.5
    (2.0 * w).backward()  # ∂L/∂w = 2; sign(q − (−1/2)) = [−1, 0, 1, 1]
    assert alpha.grad.tolist() == [-2.0, 0.0, 2.0, 2.0]


@settings(max_examples=40, deadline=None)
@given(shape=shapes, bits=bit_widths, tau=st.floats(0.05, 5.0), seed=st.integers(0, 2**16))
def test_forward_is_the_argmax_value_when_mu_is_zero(shape, bits, tau, seed):
    g = torch.Generator().manual_seed(seed)
    q = VALUE_SETS[bits]
    alpha = torch.randn(*shape, len(q), generator=g)
    expected = torch.tensor(q)[alpha.argmax(-1)]
    assert torch.equal(rdhs_select(alpha, q, tau=tau, mu=0.0), expected)
    assert torch.equal(sgt_select(alpha, q), expected)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, bits=bit_widths, tau=st.floats(0.1, 3.0), seed=st.integers(0, 2**16))
def test_gradients_against_the_formulas(shape, bits, tau, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor(VALUE_SETS[bits], dtype=torch.float64)
    alpha = torch.randn(*shape, q.numel(), generator=g, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(*shape, generator=g, dtype=torch.float64)
    # RDHS: (1/τ) π_k (q_k − Σ_j π_j q_j), π from scipy's softmax.
    pi = torch.from_numpy(softmax(alpha.detach().numpy() / tau, axis=-1))
    mean = (pi * q).sum(-1, keepdim=True)
    expected = upstream.unsqueeze(-1) * pi * (q - mean) / tau
    (grad,) = torch.autograd.grad(rdhs_select(alpha, q, tau=tau), alpha, upstream)
    torch.testing.assert_close(grad, expected)
    # SGT, element by element: ∂L/∂w · sign(q_k − q_{k*}).
    (grad,) = torch.autograd.grad(sgt_select(alpha, q), alpha, upstream)
    flat_a, flat_u = alpha.detach().reshape(-1, q.numel()), upstream.reshape(-1)
    for row, a in enumerate(flat_a):
        chosen = q[int(a.argmax())]
        for k in range(q.numel()):
            assert grad.reshape(-1, q.numel())[row, k] == flat_u[row] * torch.sign(q[k] - chosen)


def test_rdhs_gradient_is_autograd_through_the_soft_sample():
    torch.manual_seed(0)
    q = VALUE_SETS[3]
    alpha = torch.randn(5, 3, len(q), dtype=torch.float64, requires_grad=True)
    # The soft sample passes a finite-difference check ...
    assert torch.autograd.gradcheck(lambda a: rdhs_select(a, q, tau=0.7, hard=False), (alpha,))
    # ... and the hard sample's gradient is exactly the soft sample's.
    upstream = torch.randn(5, 3, dtype=torch.float64)
    (hard,) = torch.autograd.grad(rdhs_select(alpha, q, tau=0.7), alpha, upstream)
    (soft,) = torch.autograd.grad(rdhs_select(alpha, q, tau=0.7, hard=False), alpha, upstream)
    torch.testing.assert_close(hard, soft)


def test_noisy_choices_follow_the_gumbel_max_law():
    """argmax(α + μ·g) ~ Categorical(softmax(α/μ)): a chi-square test of 20,000 draws."""
    torch.manual_seed(0)
    q = VALUE_SETS[2]
    logits = torch.tensor([0.3, -0.2, 0.0, 0.1])
    mu = 0.5
    w = rdhs_select(logits.expand(20_000, 4), q, mu=mu)
    counts = torch.stack([(w == v).sum() for v in q]).double().numpy()
    expected = torch.softmax(logits.double() / mu, -1).numpy() * counts.sum()
    assert stats.chisquare(counts, expected).pvalue > 1e-3
    assert len(set(torch.softmax(logits / mu, -1).tolist())) == 4  # the law is not uniform


def _saved_numels(fn, alpha):
    numels = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: numels.append(t.numel()) or t, lambda t: t):
        fn(alpha)
    return numels


def test_sgt_saves_no_m_fold_tensor_and_rdhs_keeps_its_softmax():
    alpha = torch.randn(8, 4, 3, 3, 8, requires_grad=True)
    q = VALUE_SETS[3]
    assert max(_saved_numels(lambda a: sgt_select(a, q), alpha)) == alpha.numel() // 8
    assert alpha.numel() in _saved_numels(lambda a: rdhs_select(a, q), alpha)


def test_rejects_bad_arguments():
    alpha = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="tau"):
        rdhs_select(alpha, VALUE_SETS[1], tau=0.0)
    with pytest.raises(ValueError, match="mu"):
        rdhs_select(alpha, VALUE_SETS[1], mu=-0.1)
    with pytest.raises(ValueError, match="last dimension"):
        sgt_select(alpha, VALUE_SETS[2])
    with pytest.raises(ValueError, match="method"):
        SearchFactory(method="gumbel")


def _search_model(bits=1, method="rdhs"):
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25)
    return quantize_model(model, SearchFactory(values=bits, method=method))


def test_converter_keeps_first_and_last_float_and_holds_logits_only():
    model = _search_model(bits=2)
    layers = quantized_layers(model)
    assert [n for n, _ in layers] == ["features.3", "features.7", "features.10"]
    assert isinstance(model.features[0], nn.Conv2d) and isinstance(model.classifier, nn.Linear)
    for _, layer in layers:
        assert isinstance(layer, SearchConv2d)
        assert [n for n, _ in layer.named_parameters()] == ["alpha"]  # no float weight, no scale
        assert layer.alpha.shape[-1] == 4
        assert (layer.alpha - math.log(1 / 4)).abs().max() < 1e-4


def test_layers_compute_with_the_chosen_weights():
    torch.manual_seed(0)
    conv = SearchConv2d(3, 4, 3, padding=1, stride=2, values=3, method="sgt")
    x = torch.randn(2, 3, 7, 7)
    w = torch.tensor(VALUE_SETS[3])[conv.choices()]
    torch.testing.assert_close(conv(x), F.conv2d(x, w, None, 2, 1))
    lin = SearchLinear(5, 2, values=(-2.0, 0.0, 3.0))
    lin.bias.data.fill_(0.5)
    x = torch.randn(3, 5)
    torch.testing.assert_close(lin(x), x @ torch.tensor([-2.0, 0.0, 3.0])[lin.choices()].T + 0.5)


def test_schedule_and_options():
    model = _search_model()
    schedule = SearchSchedule(mu=0.01)
    schedule(model, 10)
    for _, layer in search_layers(model):
        assert layer.tau == pytest.approx(0.97**10) and layer.mu == 0.01
    model.eval()  # no noise at evaluation: the forward is the argmax choice
    layer = search_layers(model)[0][1]
    assert torch.equal(layer.quantized_weight(), layer.values[layer.choices()])
    with pytest.raises(ValueError, match="SGT"):
        set_search_options(_search_model(method="sgt"), mu=0.1)
    with pytest.raises(ValueError, match="decay"):
        SearchSchedule(decay=1.5)


def test_precision_is_fixed_by_the_value_set():
    model = _search_model(bits=3)
    set_precision(model, Precision(w_bits=3, a_bits=None))  # what the layers are: accepted
    for bad in (2, None, Precision(w_bits=3, a_bits=8)):
        with pytest.raises(ValueError, match="fixed by its 8 values"):
            set_precision(model, bad)


def test_value_fractions_and_choice_tracker():
    model = _search_model(bits=2)
    fractions = value_fractions(model)
    assert list(fractions.columns) == list(VALUE_SETS[2])
    torch.testing.assert_close(torch.tensor(fractions.sum(axis=1).values), torch.ones(3, dtype=torch.float64))
    name, layer = search_layers(model)[1]
    expected = (layer.choices() == 0).float().mean().item()
    assert fractions.loc[name, -1.0] == pytest.approx(expected)
    tracker = ChoiceTracker()
    tracker.on_epoch_start(model, 0)
    with torch.no_grad():  # force 5 weights onto the value 1.0 (index 3) that had another choice
        flat = layer.alpha.view(-1, 4)
        rows = (flat.argmax(-1) != 3).nonzero().flatten()[:5]
        flat[rows, 3] = 10.0
    tracker.on_epoch_end(model, 0)
    frame = tracker.frame().set_index("layer")
    assert frame.loc[name, "changed"] == 5 and frame["changed"].sum() == 5


def test_measure_training_cost_orders_the_methods():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 10, (16,))
    models = {"float": build_model("small_cnn", in_channels=1, num_classes=10, image_size=8, width=0.25),
              "rdhs": _search_model(3, "rdhs"), "sgt": _search_model(3, "sgt")}
    cost = measure_training_cost(models, x, y, repeats=2, warmup=1)
    assert cost.loc["float", "time_rel"] == 1.0 and cost.loc["float", "memory_rel"] == 1.0
    assert cost.loc["sgt", "saved_mb"] < cost.loc["rdhs", "saved_mb"]
    with pytest.raises(ValueError, match="baseline"):
        measure_training_cost(models, x, y, baseline="fp32")


def test_measure_selection_cost_table():
    table = measure_selection_cost((4, 3, 3, 3), bits=(1, 3), repeats=3, warmup=1)
    assert list(table.index) == [1, 3]
    assert (table[["rdhs_us", "sgt_us", "sgt_over_rdhs"]] > 0).all().all()
    with pytest.raises(ValueError, match="repeats"):
        measure_selection_cost((2, 2), repeats=0)
