"""A small, safe subset of CEL for Istio's access log ``filter.expression``.

Istio hands the expression to Envoy's CEL evaluator; meshware compiles the subset that such
filters use in practice into a Python closure, once per config version, so a request pays
one call. Anything outside the subset is refused when the config is validated, naming the
position, so an expression never fails at request time.

Grammar (precedence low to high)::

    expr    := or ( '?' expr ':' expr )?
    or      := and ( '||' and )*
    and     := rel ( '&&' rel )*
    rel     := unary ( ( '==' | '!=' | '<' | '<=' | '>' | '>=' | 'in' ) unary )?
    unary   := '!' unary | '-' unary | member
    member  := primary ( '.' NAME [ '(' args ')' ] | '[' expr ']' )*
    primary := INT | FLOAT | STRING | 'true' | 'false' | 'null' | NAME | '(' expr ')'
             | '[' args ']' | NAME '(' args ')'

Functions: ``has(a.b)``, ``size(x)``, ``int(x)``, ``string(x)``; methods ``startsWith``,
``endsWith``, ``contains``. Attributes are looked up in a nested mapping of the request's
values (see :mod:`meshware.telemetry.access_log`); a missing attribute makes the whole
expression false, as an evaluation error does in Envoy (the entry is not logged).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshware.errors import MeshwareError

__all__ = ["CelError", "Predicate", "TagValue", "compile_filter", "compile_value"]

Evaluator = Callable[[Mapping[str, Any]], Any]
Predicate = Callable[[Mapping[str, Any]], bool]


class CelError(MeshwareError):
    """The expression is not valid in the supported CEL subset."""


class _Missing(Exception):
    """An attribute the request does not have: the expression evaluates to false."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<float>\d+\.\d+)
      | (?P<int>\d+)u?
      | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>\|\||&&|==|!=|<=|>=|[<>!?:.,()\[\]-])
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'"}


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), body)


def _tokens(source: str) -> list[tuple[str, Any, int]]:
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    while pos < len(source):
        if source[pos:].strip() == "":
            break
        match = _TOKEN.match(source, pos)
        if match is None:
            start = len(source) - len(source[pos:].lstrip())
            raise CelError(f"unexpected character {source[start]!r} at position {start}")
        kind = match.lastgroup or ""
        text = match.group(kind)
        at = match.start(kind)
        if kind == "int":
            tokens.append(("lit", int(text), at))
        elif kind == "float":
            tokens.append(("lit", float(text), at))
        elif kind == "string":
            tokens.append(("lit", _unquote(text), at))
        elif kind == "name" and text in ("true", "false", "null"):
            tokens.append(("lit", {"true": True, "false": False, "null": None}[text], at))
        elif kind == "name" and text == "in":
            tokens.append(("op", "in", at))
        else:
            tokens.append((kind, text, at))
        pos = match.end()
    tokens.append(("end", None, len(source)))
    return tokens


def _compare(op: str) -> Callable[[Any, Any], bool]:
    def check(a: Any, b: Any) -> bool:
        if op == "==":
            return bool(a == b)
        if op == "!=":
            return bool(a != b)
        if op == "in":
            return a in b if isinstance(b, list | tuple | Mapping | str) else False
        if type(a) is bool or type(b) is bool or isinstance(a, str) != isinstance(b, str):
            raise _Missing  # ordering across types is an error in CEL
        if op == "<":
            return bool(a < b)
        if op == "<=":
            return bool(a <= b)
        if op == ">":
            return bool(a > b)
        return bool(a >= b)

    return check


_METHODS: dict[str, Callable[[str, str], bool]] = {
    "startsWith": str.startswith,
    "endsWith": str.endswith,
    "contains": str.__contains__,
}


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = _tokens(source)
        self.i = 0
        self.reads = False
        """Whether the expression reads any attribute (False: it is a constant)."""

    def peek(self) -> tuple[str, Any, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, Any, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, text: str) -> None:
        kind, value, at = self.take()
        if kind != "op" or value != text:
            found = "the end" if kind == "end" else repr(value)
            raise CelError(f"expected {text!r} at position {at}, found {found}")

    def at_op(self, *texts: str) -> bool:
        kind, value, _ = self.peek()
        return kind == "op" and value in texts

    def parse(self) -> Evaluator:
        node = self.expr()
        kind, value, at = self.peek()
        if kind != "end":
            raise CelError(f"unexpected {value!r} at position {at}")
        return node

    def expr(self) -> Evaluator:
        cond = self.or_()
        if not self.at_op("?"):
            return cond
        self.take()
        yes = self.expr()
        self.expect(":")
        no = self.expr()
        return lambda a: yes(a) if _truth(cond(a)) else no(a)

    def or_(self) -> Evaluator:
        node = self.and_()
        while self.at_op("||"):
            self.take()
            node = _or(node, self.and_())
        return node

    def and_(self) -> Evaluator:
        node = self.rel()
        while self.at_op("&&"):
            self.take()
            node = _and(node, self.rel())
        return node

    def rel(self) -> Evaluator:
        left = self.unary()
        if self.at_op("==", "!=", "<", "<=", ">", ">=", "in"):
            check = _compare(self.take()[1])
            right = self.unary()
            return lambda a: check(left(a), right(a))
        return left

    def unary(self) -> Evaluator:
        if self.at_op("!"):
            self.take()
            inner = self.unary()
            return lambda a: not _truth(inner(a))
        if self.at_op("-"):
            self.take()
            inner = self.unary()
            return lambda a: -_number(inner(a))
        return self.member()

    def member(self) -> Evaluator:
        node = self.primary()
        while True:
            if self.at_op("."):
                self.take()
                kind, name, at = self.take()
                if kind != "name":
                    raise CelError(f"expected a field or method name at position {at}")
                node = self.method(node, name, at) if self.at_op("(") else _field(node, name)
            elif self.at_op("["):
                self.take()
                key = self.expr()
                self.expect("]")
                node = _index(node, key)
            else:
                return node

    def method(self, target: Evaluator, name: str, at: int) -> Evaluator:
        function = _METHODS.get(name)
        if function is None:
            raise CelError(f"unsupported method {name!r} at position {at}")
        args = self.args(")")
        if len(args) != 1:
            raise CelError(f"{name}() takes one argument (position {at})")
        (arg,) = args

        def call(a: Mapping[str, Any]) -> bool:
            value, other = target(a), arg(a)
            if not isinstance(value, str) or not isinstance(other, str):
                raise _Missing
            return function(value, other)

        return call

    def args(self, close: str) -> list[Evaluator]:
        self.expect("(" if close == ")" else "[")
        items: list[Evaluator] = []
        if self.at_op(close):
            self.take()
            return items
        while True:
            items.append(self.expr())
            if self.at_op(close):
                self.take()
                return items
            self.expect(",")

    def primary(self) -> Evaluator:
        kind, value, at = self.peek()
        if kind == "lit":
            self.take()
            return _constant(value)
        if kind == "op" and value == "(":
            self.take()
            inner = self.expr()
            self.expect(")")
            return inner
        if kind == "op" and value == "[":
            items = self.args("]")
            return lambda a: [item(a) for item in items]
        if kind == "name":
            self.take()
            if self.at_op("("):
                return self.function(value, at)
            self.reads = True
            return _attribute(str(value))
        found = "the end" if kind == "end" else repr(value)
        raise CelError(f"unexpected {found} at position {at}")

    def function(self, name: str, at: int) -> Evaluator:
        args = self.args(")")
        if len(args) != 1:
            raise CelError(f"{name}() takes one argument (position {at})")
        (arg,) = args
        if name == "has":

            def has(a: Mapping[str, Any]) -> bool:
                try:
                    return arg(a) is not None
                except _Missing:
                    return False

            return has
        if name == "size":
            return lambda a: len(_sized(arg(a)))
        if name == "int":
            return lambda a: int(_number(arg(a)))
        if name == "string":
            return lambda a: str(arg(a))
        raise CelError(f"unsupported function {name!r} at position {at}")


def _truth(value: Any) -> bool:
    if type(value) is not bool:
        raise _Missing  # CEL: '&&', '||', '!' and '?:' need booleans
    return value


def _constant(value: Any) -> Evaluator:
    return lambda _attributes: value


def _attribute(name: str) -> Evaluator:
    return lambda attributes: _get(attributes, name)


def _and(left: Evaluator, right: Evaluator) -> Evaluator:
    def both(a: Mapping[str, Any]) -> bool:
        # CEL's commutative '&&': an error on one side is absorbed by false on the other
        try:
            if not _truth(left(a)):
                return False
        except _Missing:
            return _truth(right(a)) and _raise_missing()
        return _truth(right(a))

    return both


def _or(left: Evaluator, right: Evaluator) -> Evaluator:
    def either(a: Mapping[str, Any]) -> bool:
        # CEL's commutative '||': an error on one side is absorbed by true on the other
        try:
            if _truth(left(a)):
                return True
        except _Missing:
            return _truth(right(a)) or _raise_missing()
        return _truth(right(a))

    return either


def _raise_missing() -> bool:
    raise _Missing


def _number(value: Any) -> int | float:
    if type(value) is bool or not isinstance(value, int | float):
        raise _Missing
    return value


def _sized(value: Any) -> str | list[Any] | Mapping[str, Any]:
    if not isinstance(value, str | list | Mapping):
        raise _Missing
    return value


def _get(attributes: Mapping[str, Any], name: str) -> Any:
    try:
        return attributes[name]
    except KeyError:
        raise _Missing from None


def _field(target: Evaluator, name: str) -> Evaluator:
    def get(a: Mapping[str, Any]) -> Any:
        value = target(a)
        if not isinstance(value, Mapping) or name not in value:
            raise _Missing
        return value[name]

    return get


def _index(target: Evaluator, key: Evaluator) -> Evaluator:
    def get(a: Mapping[str, Any]) -> Any:
        value, k = target(a), key(a)
        try:
            if isinstance(value, Mapping):  # header names are case-insensitive: keys lower-case
                return value[k.lower() if isinstance(k, str) else k]
            if isinstance(value, list) and type(k) is int:
                return value[k]
        except (KeyError, IndexError):
            pass
        raise _Missing

    return get


def compile_filter(source: str) -> Predicate:
    """Compile ``source``; raises :class:`CelError` naming what is wrong and where.

    The predicate returns False when the expression does not evaluate to ``true`` (missing
    attributes and type errors included): such requests are not logged.
    """
    if len(source) > 4096:
        raise CelError("expression longer than 4096 characters")
    evaluate = _Parser(source).parse()

    def predicate(attributes: Mapping[str, Any]) -> bool:
        try:
            return evaluate(attributes) is True
        except (_Missing, ValueError, TypeError, ZeroDivisionError):
            return False

    return predicate


UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class TagValue:
    """A compiled metric tag value (``tagOverrides.NAME.value``)."""

    source: str
    evaluate: Callable[[Mapping[str, Any]], str]
    """The value for a request's attributes; ``unknown`` when it cannot be evaluated."""
    constant: str | None
    """The value when the expression reads no attribute (then :attr:`evaluate` is not
    needed), else None."""


def _label(value: Any) -> str:
    """A CEL value as a metric label (``string()`` of it; lists and maps are not labels)."""
    if isinstance(value, str):
        return value
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise _Missing


def compile_value(source: str) -> TagValue:
    """Compile a tag value expression; raises :class:`CelError` naming what is wrong.

    The value is the expression's result as a string; a missing attribute, a type error or
    a result that is not a string, number or boolean gives ``unknown``, as Istio reports a
    tag it cannot evaluate.
    """
    if len(source) > 4096:
        raise CelError("expression longer than 4096 characters")
    parser = _Parser(source)
    evaluate = parser.parse()

    def value(attributes: Mapping[str, Any]) -> str:
        try:
            return _label(evaluate(attributes))
        except (_Missing, ValueError, TypeError, ZeroDivisionError):
            return UNKNOWN

    constant = None if parser.reads else value({})
    return TagValue(source, value, constant)
