"""Expression trees and the parser of the factor language.

Grammar (whitespace ignored; precedence low -> high)::

    expr    := cmp
    cmp     := add (('>' | '>=' | '<' | '<=' | '==' | '!=') add)*
    add     := mul (('+' | '-') mul)*
    mul     := unary (('*' | '/') unary)*
    unary   := '-' unary | '+' unary | primary
    primary := NUMBER | '$' NAME | NAME '(' [expr (',' expr)*] ')' | '(' expr ')'

Numbers are decimal literals (``5``, ``0.8``, ``1e-12``). Operator names are case-sensitive
(``Mean``, ``Corr``...; see :mod:`.ops`). Windows (``d``) must be integer literals >= the
operator's minimum; ``Quantile``'s ``q`` a literal in [0, 1]. Sub-expressions made of constants
only are folded (``-1``, ``2*3``).

A parsed expression is an immutable :class:`Node`; two nodes with the same canonical
:attr:`Node.key` compute the same values, which is what common-subexpression elimination uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

import numpy as np

from mystocks_gpu.gpu_ops.factors.exceptions import ExpressionError, ExpressionSyntaxError
from mystocks_gpu.gpu_ops.factors.ops import (
    COMMUTATIVE,
    DEFAULT_FIELDS,
    ELEM,
    INFIX,
    INFIX_OF,
    OPS,
    TS,
)

FIELD = "$"
CONST = "Const"


class Node:
    """One node of an expression tree: a field (``op == "$"``, ``name``), a constant
    (``op == "Const"``, ``value``) or an operator call (``op`` in :data:`.ops.OPS`, ``args`` the
    expression arguments, ``params`` the integer window and float ``q`` literals)."""

    __slots__ = ("op", "args", "params", "name", "value", "key", "_hash", "depth", "size")
    op: str
    args: tuple[Node, ...]
    params: tuple[float, ...]
    name: str
    value: float
    key: str
    _hash: int
    depth: int
    size: int

    def __init__(
        self,
        op: str,
        args: tuple[Node, ...] = (),
        params: tuple[float, ...] = (),
        name: str = "",
        value: float = 0.0,
    ) -> None:
        if op in COMMUTATIVE and len(args) == 2 and args[1].key < args[0].key:
            args = (args[1], args[0])
        self.op = op
        self.args = args
        self.params = params
        self.name = name
        self.value = value
        if op == FIELD:
            self.key = "$" + name
        elif op == CONST:
            self.key = repr(float(value))
        else:
            parts = [a.key for a in args] + [_fmt_param(p) for p in params]
            self.key = f"{op}({','.join(parts)})"
        self._hash = hash(self.key)
        self.depth = 1 + max((a.depth for a in args), default=0)
        self.size = 1 + sum(a.size for a in args)

    # value semantics by canonical key
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.key == self.key

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"Node({self.key})"

    @property
    def window(self) -> int:
        """The window ``d`` of a time-series node (0 for other nodes)."""
        return int(self.params[0]) if OPS.get(self.op) is not None and OPS[self.op].kind == TS else 0

    def walk(self) -> Iterator[Node]:
        """Every node of the tree, children before parents (post-order, duplicates included)."""
        for a in self.args:
            yield from a.walk()
        yield self

    def fields(self) -> set[str]:
        """Names of the bar fields this expression reads."""
        return {n.name for n in self.walk() if n.op == FIELD}

    def to_string(self) -> str:
        """Human-readable form that parses back to an equal node (infix for arithmetic)."""
        if self.op == FIELD:
            return self.key
        if self.op == CONST:
            v = self.value
            return _fmt_param(v) if v >= 0 else f"({_fmt_param(v)})"
        if self.op in INFIX_OF:
            a, b = (x.to_string() for x in self.args)
            return f"({a} {INFIX_OF[self.op]} {b})"
        if self.op == "Neg":
            return f"(-{self.args[0].to_string()})"
        parts = [a.to_string() for a in self.args] + [_fmt_param(p) for p in self.params]
        return f"{self.op}({', '.join(parts)})"


def _fmt_param(p: float) -> str:
    if isinstance(p, int) or (float(p).is_integer() and abs(p) < 1e15):
        return str(int(p))
    return repr(float(p))


def field(name: str) -> Node:
    """A field node (``$name``)."""
    return Node(FIELD, name=name)


def const(value: float) -> Node:
    """A constant node."""
    return Node(CONST, value=float(value))


def call(op: str, *args: Node, params: tuple[float, ...] = ()) -> Node:
    """An operator node, constant-folded when every argument is a constant and ``op`` is
    element-wise. Arity is the caller's responsibility (the parser checks it)."""
    if OPS[op].kind == ELEM and args and all(a.op == CONST for a in args):
        return const(_fold(op, [a.value for a in args]))
    return Node(op, tuple(args), tuple(params))


def _fold(op: str, vals: list[float]) -> float:
    from mystocks_gpu.gpu_ops.factors.elementwise import apply_elementwise

    with np.errstate(all="ignore"):
        out = apply_elementwise(np, op, [np.asarray([v], dtype=np.float64) for v in vals])
    return float(out[0])


# ---- tokenizer --------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
    r"|(?P<field>\$[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op>>=|<=|==|!=|[-+*/(),<>]))"
)


class _Tok:
    __slots__ = ("kind", "text", "pos")

    def __init__(self, kind: str, text: str, pos: int) -> None:
        self.kind, self.text, self.pos = kind, text, pos


def _tokenize(s: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(s)
    while i < n:
        if s[i].isspace():
            i += 1
            continue
        m = _TOKEN.match(s, i)
        if m is None or m.lastgroup is None:
            raise ExpressionSyntaxError(f"unexpected character {s[i]!r}", s, i)
        kind = m.lastgroup
        toks.append(_Tok(kind, m.group(kind), m.start(kind)))
        i = m.end()
    toks.append(_Tok("end", "", n))
    return toks


class _Parser:
    def __init__(self, text: str, fields: frozenset[str]) -> None:
        self.s = text
        self.toks = _tokenize(text)
        self.i = 0
        self.fields = fields

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, text: str) -> _Tok:
        t = self.peek()
        if t.text != text or t.kind not in ("op",):
            what = "end of expression" if t.kind == "end" else repr(t.text)
            raise ExpressionSyntaxError(f"expected {text!r}, found {what}", self.s, t.pos)
        return self.take()

    def parse(self) -> tuple[Node, int]:
        node, _ = self.cmp()
        t = self.peek()
        if t.kind != "end":
            raise ExpressionSyntaxError(f"unexpected {t.text!r}", self.s, t.pos)
        return node, 0

    def cmp(self) -> tuple[Node, _Tok]:
        left, lt = self.add()
        while self.peek().kind == "op" and self.peek().text in (">", ">=", "<", "<=", "==", "!="):
            op = self.take().text
            right, _ = self.add()
            left = call(INFIX[op], left, right)
        return left, lt

    def add(self) -> tuple[Node, _Tok]:
        left, lt = self.mul()
        while self.peek().kind == "op" and self.peek().text in ("+", "-"):
            op = self.take().text
            right, _ = self.mul()
            left = call(INFIX[op], left, right)
        return left, lt

    def mul(self) -> tuple[Node, _Tok]:
        left, lt = self.unary()
        while self.peek().kind == "op" and self.peek().text in ("*", "/"):
            op = self.take().text
            right, _ = self.unary()
            left = call(INFIX[op], left, right)
        return left, lt

    def unary(self) -> tuple[Node, _Tok]:
        t = self.peek()
        if t.kind == "op" and t.text in ("-", "+"):
            self.take()
            inner, _ = self.unary()
            return (call("Neg", inner) if t.text == "-" else inner), t
        return self.primary()

    def primary(self) -> tuple[Node, _Tok]:
        t = self.take()
        if t.kind == "num":
            return const(float(t.text)), t
        if t.kind == "field":
            name = t.text[1:]
            if name not in self.fields:
                known = " ".join("$" + f for f in sorted(self.fields))
                raise ExpressionError(
                    f"unknown field {t.text!r} at position {t.pos} in {self.s!r}; known: {known}"
                )
            return field(name), t
        if t.kind == "name":
            return self.call(t), t
        if t.kind == "op" and t.text == "(":
            node, _ = self.cmp()
            self.expect(")")
            return node, t
        what = "end of expression" if t.kind == "end" else repr(t.text)
        raise ExpressionSyntaxError(f"unexpected {what}", self.s, t.pos)

    def call(self, name_tok: _Tok) -> Node:
        name = name_tok.text
        spec = OPS.get(name)
        if spec is None:
            near = [k for k in OPS if k.lower() == name.lower()]
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise ExpressionError(
                f"unknown operator {name!r} at position {name_tok.pos} in {self.s!r}{hint}"
            )
        self.expect("(")
        args: list[tuple[Node, _Tok]] = []
        if not (self.peek().kind == "op" and self.peek().text == ")"):
            while True:
                start = self.peek()
                node, _ = self.cmp()
                args.append((node, start))
                if self.peek().kind == "op" and self.peek().text == ",":
                    self.take()
                    continue
                break
        self.expect(")")
        if len(args) != spec.n_args:
            raise ExpressionError(
                f"{name} takes {spec.n_args} argument(s) {spec.signature()}, got {len(args)} "
                f"at position {name_tok.pos} in {self.s!r}"
            )
        exprs = [a[0] for a in args[: spec.n_expr]]
        params: list[float] = []
        for node, tok in args[spec.n_expr : spec.n_expr + spec.n_window]:
            v = node.value if node.op == CONST else math.nan
            if node.op != CONST or not float(v).is_integer() or v < spec.min_window:
                raise ExpressionError(
                    f"window of {name} must be an integer literal >= {spec.min_window}, got "
                    f"{node.to_string()!r} at position {tok.pos} in {self.s!r}"
                )
            params.append(int(v))
        for node, tok in args[spec.n_expr + spec.n_window :]:
            if node.op != CONST or not 0.0 <= node.value <= 1.0:
                raise ExpressionError(
                    f"q of {name} must be a number in [0, 1], got {node.to_string()!r} at "
                    f"position {tok.pos} in {self.s!r}"
                )
            params.append(float(node.value))
        return call(name, *exprs, params=tuple(params))


def parse(text: str, fields: Iterable[str] = DEFAULT_FIELDS) -> Node:
    """Parse one expression into a :class:`Node`.

    Args:
        text: the formula, e.g. ``"Corr($close, Log($volume + 1), 10)"``.
        fields: bar field names allowed after ``$`` (default ``open high low close volume vwap``).

    Raises:
        ExpressionSyntaxError: the text does not parse (``.position`` = 0-based offset).
        ExpressionError: unknown field/operator, wrong arity, bad window or ``q``.
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionSyntaxError("empty expression", str(text), 0)
    node, _ = _Parser(text, frozenset(fields)).parse()
    return node


def parse_many(
    exprs: dict[str, str] | Iterable[str], fields: Iterable[str] = DEFAULT_FIELDS
) -> dict[str, Node]:
    """Parse ``name -> formula`` (or a list of formulas, named by themselves) in order.

    An error names the factor: ``factor 'X': <parse error>``.
    """
    items = exprs.items() if isinstance(exprs, dict) else ((e, e) for e in exprs)
    fset = tuple(fields)
    out: dict[str, Node] = {}
    for name, text in items:
        try:
            out[name] = parse(text, fset)
        except ExpressionSyntaxError as exc:
            raise ExpressionSyntaxError(
                f"factor {name!r}: {str(exc).splitlines()[0].rsplit(' at position', 1)[0]}",
                text, exc.position,
            ) from None
        except ExpressionError as exc:
            raise ExpressionError(f"factor {name!r}: {exc}") from None
    return out


def max_window(node: Node) -> int:
    """The longest single window (bars) in the expression (0 if none)."""
    return max((n.window for n in node.walk()), default=0)


def warmup(node: Node) -> int:
    """Bars of history consumed before the first possibly-finite value (sum of window - 1 along
    the deepest path; ``Ref``/``Delta`` count ``d``; ``EMA`` counts ``d - 1``)."""
    if node.op in (FIELD, CONST):
        return 0
    spec = OPS[node.op]
    inner = max((warmup(a) for a in node.args), default=0)
    if spec.kind != TS:
        return inner
    d = node.window
    return inner + (d if node.op in ("Ref", "Delta") else d - 1)
