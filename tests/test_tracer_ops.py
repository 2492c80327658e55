"""The op registry: every operation is either traced so that permutations keep the function, or refused.

Two branches ``a(x)`` and ``b(x)`` (Linear layers of one width) are combined by an operation and
read by ``c``. For each operation, and for seeded compositions of two, the tracer must either
describe the model so that random permutations keep its function, or refuse it with a
``WeightSpaceError``. Anything else (another exception, a changed function) fails.
"""
import random

import pytest
import torch
import torch.nn as nn

from weightspace import UnsupportedOperation, WeightSpace, WeightSpaceError
from weightspace.space import supported_ops

W, B, IN = 6, 5, 4

# name -> (combine(a, b), expected outcome): "perm" = traced with a or b's units permutable,
# "traced" = traced (their units may be fixed), "refused" = UnsupportedOperation.
OPS = {
    "add": (lambda a, b: a + b, "perm"),
    "sub": (lambda a, b: a - b, "perm"),
    "mul": (lambda a, b: a * b, "perm"),
    "div": (lambda a, b: a / (b.abs() + 1), "perm"),
    "rsub_scalar": (lambda a, b: 1 - a * b, "perm"),
    "pow": (lambda a, b: torch.pow(torch.sigmoid(a) + 1, torch.sigmoid(b)), "perm"),
    "pow_operator": (lambda a, b: (torch.sigmoid(a) + 1) ** torch.sigmoid(b), "perm"),
    "clamp_min": (lambda a, b: torch.clamp(a, min=b), "perm"),
    "clamp_both": (lambda a, b: a.clamp(b - 0.5, b + 0.5), "perm"),
    "clip": (lambda a, b: torch.clip(a, max=b), "perm"),
    "where": (lambda a, b: torch.where(a > b, a, b * 2), "perm"),
    "lerp": (lambda a, b: torch.lerp(a, b, torch.sigmoid(a)), "perm"),
    "maximum": (lambda a, b: torch.maximum(a, b), "perm"),
    "minimum": (lambda a, b: torch.minimum(a, b), "perm"),
    "max_binary": (lambda a, b: torch.max(a, b), "perm"),
    "min_binary": (lambda a, b: a.min(b), "perm"),
    "atan2": (lambda a, b: torch.atan2(a, b), "perm"),
    "addcmul": (lambda a, b: torch.addcmul(a, a, b, value=0.5), "perm"),
    "addcdiv": (lambda a, b: torch.addcdiv(b, a, b.abs() + 1), "perm"),
    "masked_fill": (lambda a, b: a.masked_fill(b > 0, 0.5), "perm"),
    "logaddexp": (lambda a, b: torch.logaddexp(a, b), "perm"),
    "cat": (lambda a, b: torch.cat([a, b], -1), "perm"),
    "cat_batch": (lambda a, b: torch.cat([a, b], 0), "refused"),  # c would read a's units in some rows, b's in others
    "stack": (lambda a, b: torch.stack([a, b], 1).flatten(1), "perm"),
    "split": (lambda a, b: (lambda p, q: p * q)(*torch.cat([a, b], -1).split(W, -1)), "perm"),
    "split_halves": (lambda a, b: a.split(W // 2, -1)[0] * b.split(W // 2, -1)[1], "perm"),
    "chunk": (lambda a, b: torch.cat(a.chunk(2, -1)[::-1], -1) + b, "perm"),
    "roll": (lambda a, b: torch.roll(a, 1, -1) + b, "traced"),
    "roll_batch": (lambda a, b: torch.roll(a, 1, 0) + b, "perm"),
    "flip": (lambda a, b: a.flip(-1) * b, "traced"),
    "cumsum": (lambda a, b: torch.cumsum(a, -1) + b, "refused"),
    "cumsum_batch": (lambda a, b: torch.cumsum(a * b, 0), "perm"),
    "sort": (lambda a, b: torch.sort(a, -1).values + b, "refused"),
    "sort_batch": (lambda a, b: torch.sort(a, 0).values + b, "perm"),
    "topk": (lambda a, b: a.topk(2, -1).values, "refused"),
    "softmax": (lambda a, b: torch.softmax(a, -1) * b, "perm"),
    "log_softmax": (lambda a, b: torch.log_softmax(a + b, -1), "perm"),
    "matmul_dot": (lambda a, b: a.unsqueeze(1) @ b.unsqueeze(2), "perm"),
    "matmul_outer": (lambda a, b: (a.unsqueeze(2) @ b.unsqueeze(1)).flatten(1), "perm"),
    "sum_units": (lambda a, b: a.sum(-1, keepdim=True) * b, "perm"),
    "max_dim": (lambda a, b: a.max(-1, keepdim=True).values * b, "traced"),
    "argmax": (lambda a, b: a.argmax(-1, keepdim=True).float() + b, "traced"),
    "getitem": (lambda a, b: a[:, :3] * b[:, 3:], "traced"),
    "transpose": (lambda a, b: (a.unsqueeze(0).transpose(0, 1) * b.unsqueeze(1)).squeeze(1), "perm"),
}
# shape-preserving ops, for compositions op2(op1(a, b), a)
SAME_SHAPE = [n for n, (f, _) in OPS.items() if f(torch.randn(B, W), torch.randn(B, W)).shape == (B, W)]


class Combo(nn.Module):
    def __init__(self, combine):
        super().__init__()
        self.combine = combine
        self.a, self.b = nn.Linear(IN, W), nn.Linear(IN, W)
        with torch.no_grad():
            width = combine(torch.randn(B, W), torch.randn(B, W)).flatten(1).shape[1]
        self.c = nn.Linear(width, 3)

    def forward(self, x):
        return self.c(self.combine(self.a(x), self.b(x)).flatten(1))


def _outcome(combine, seed: int = 0) -> tuple[str, WeightSpace | None]:
    """Trace; on success check 3 random permutations keep the function (1e-5)."""
    torch.manual_seed(seed)
    model = Combo(combine).eval()
    x = torch.randn(B, IN)
    try:
        space = WeightSpace.from_module(model, x)
    except WeightSpaceError:
        return "refused", None
    with torch.no_grad():
        y = model(x)
        for k in range(3):
            perm = space.random_permutation(torch.Generator().manual_seed(k))
            other = Combo(combine).eval()
            other.load_state_dict(space.permute(model.state_dict(), perm))
            torch.testing.assert_close(other(x), y, rtol=1e-5, atol=1e-5)
    return "traced", space


def _branch_units_permutable(space: WeightSpace) -> bool:
    return any(space.groups[g].permutable for k in ("a.weight", "b.weight")
               for g in _leaves(space.params[k].axes[0]))


def _leaves(d):
    return [d] if isinstance(d, int) else [leaf for p in d.parts for leaf in _leaves(p)]


@pytest.mark.parametrize("name", list(OPS))
def test_each_op_is_traced_faithfully_or_refused(name):
    combine, expected = OPS[name]
    outcome, space = _outcome(combine)
    if expected == "refused":
        assert outcome == "refused", f"{name} should be refused"
        return
    assert outcome == "traced", f"{name} should be traced"
    if expected == "perm":
        assert _branch_units_permutable(space), f"{name}: the branches' units should stay permutable"


def test_composed_ops_are_traced_faithfully_or_refused():
    rng = random.Random(0)
    pairs = [(rng.choice(SAME_SHAPE), rng.choice(SAME_SHAPE)) for _ in range(30)]
    traced = 0
    for first, second in pairs:
        f, g = OPS[first][0], OPS[second][0]
        outcome, _ = _outcome(lambda a, b, f=f, g=g: g(f(a, b), a), seed=len(first))
        traced += outcome == "traced"
    assert traced >= 20, "most compositions of traceable ops must be traced"


def test_op_list_covers_the_required_operations():
    assert len(OPS) >= 20
    ops = supported_ops()
    for name in ["add", "sub", "mul", "div", "clamp", "clip", "pow", "where", "lerp", "maximum", "minimum",
                 "atan2", "addcmul", "cat", "split", "roll", "flip", "cumsum", "sort", "softmax", "matmul"]:
        assert name in ops and ops[name].doc and ops[name].category, name


# ------------------------------------------------------------------ regressions: tensor operands once ignored
class TwoBranch(nn.Module):
    def __init__(self, combine):
        super().__init__()
        self.combine = combine
        self.a, self.b, self.c = nn.Linear(IN, W), nn.Linear(IN, W), nn.Linear(W, 3)

    def forward(self, x):
        return self.c(self.combine(self.a(x), self.b(x)))


@pytest.mark.parametrize("combine", [
    lambda a, b: torch.pow(torch.sigmoid(a) + 1, torch.sigmoid(b)),
    lambda a, b: torch.clamp(a, min=b),
    lambda a, b: torch.clip(a, b - 0.1, b + 0.1),
    lambda a, b: torch.max(a, b),
], ids=["pow", "clamp_min", "clip", "max"])
def test_second_tensor_operand_shares_the_units(combine):
    torch.manual_seed(0)
    model, x = TwoBranch(combine).eval(), torch.randn(B, IN)
    space = WeightSpace.from_module(model, x)
    ga, gb = space.params["a.weight"].axes[0], space.params["b.weight"].axes[0]
    assert ga == gb and space.groups[ga].permutable, "a and b are combined unit by unit: one group"
    perm = space.random_permutation(torch.Generator().manual_seed(0))
    other = TwoBranch(combine).eval()
    other.load_state_dict(space.permute(model.state_dict(), perm))
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ refusals name module and operation
class Inner(nn.Module):
    def __init__(self, combine):
        super().__init__()
        self.a, self.combine = nn.Linear(IN, W), combine

    def forward(self, x):
        return self.combine(self.a(x))


class Outer(nn.Module):
    def __init__(self, combine):
        super().__init__()
        self.block = Inner(combine)

    def forward(self, x):
        return self.block(x)


def test_undeclared_tensor_operand_is_refused():
    buf = torch.empty(B, W)
    with pytest.raises(UnsupportedOperation, match=r"module 'block' \(Inner\), operation 'add'.*keyword 'out'"):
        WeightSpace.from_module(Outer(lambda h: torch.add(h, 1.0, out=buf)), torch.randn(B, IN))
    with pytest.raises(UnsupportedOperation, match=r"module 'block' \(Inner\), operation 'tensor_split'.*argument 1"):
        WeightSpace.from_module(Outer(lambda h: torch.tensor_split(h, torch.tensor([2]), dim=1)[0]),
                                torch.randn(B, IN))


def test_unknown_operation_points_to_the_registry():
    with pytest.raises(UnsupportedOperation, match=r"module 'block' \(Inner\), operation 'einsum'.*supported_ops"):
        WeightSpace.from_module(Outer(lambda h: torch.einsum("bi,bi->bi", h, h)), torch.randn(B, IN))


def test_order_dependent_op_on_units_is_refused_by_name():
    with pytest.raises(UnsupportedOperation, match=r"module 'block' \(Inner\), operation 'cumsum'.*units"):
        WeightSpace.from_module(Outer(lambda h: h.cumsum(-1)), torch.randn(B, IN))


# ------------------------------------------------------------------ normalisation over channel groups
class Normed(nn.Module):
    def __init__(self, norm: nn.Module):
        super().__init__()
        self.c1, self.norm, self.c2 = nn.Conv2d(2, 6, 3, padding=1), norm, nn.Conv2d(6, 3, 3)
        with torch.no_grad():
            self.norm.weight.normal_()
            self.norm.bias.normal_()

    def forward(self, x):
        return self.c2(torch.relu(self.norm(self.c1(x))))


@pytest.mark.parametrize("make,blocks", [(lambda: nn.GroupNorm(2, 6), 2), (lambda: nn.GroupNorm(3, 6), 3),
                                         (lambda: nn.GroupNorm(1, 6), None),
                                         (lambda: nn.InstanceNorm2d(6, affine=True), None)],
                         ids=["groups2", "groups3", "groups1", "instance"])
def test_group_and_instance_norm_keep_the_function(make, blocks):
    torch.manual_seed(0)
    model, x = Normed(make()).eval(), torch.randn(2, 2, 5, 5)
    space = WeightSpace.from_module(model, x)
    axis = space.params["c1.weight"].axes[0]
    if blocks:
        outer, inner = axis.parts
        assert space.groups[outer].size == blocks and space.groups[inner].parent == space.groups[outer].name
    else:
        assert isinstance(axis, int) and space.groups[axis].permutable
    assert [s.op for s in space.activation_sites][-1] in ("group_norm", "instance_norm")
    with torch.no_grad():
        for k in range(3):
            other = Normed(make()).eval()
            other.load_state_dict(space.permute(model.state_dict(),
                                                space.random_permutation(torch.Generator().manual_seed(k))))
            torch.testing.assert_close(other(x), model(x), rtol=1e-5, atol=1e-5)
