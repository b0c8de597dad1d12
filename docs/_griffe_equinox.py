"""A griffe extension (mkdocs.yml, mkdocstrings ``extensions:``): the ``__init__`` of Equinox modules.

``eqx.Module`` subclasses are dataclasses made by a metaclass, which griffe's static analysis does not
see: their documented signature would be empty and the ``Args:`` of their docstrings would not match it.
This re-creates the dataclass ``__init__`` that Equinox generates (fields in definition order, parents'
first; ``eqx.field(default=..., kw_only=..., init=...)`` honoured; class variables, properties and
``AbstractVar`` left out) for every Equinox module that does not define ``__init__`` itself.
"""

from __future__ import annotations

from contextlib import suppress

import griffe

_MODULE = {"equinox.Module", "equinox._module.Module"}
_FIELD = {"equinox.field", "equinox._module.field", "dataclasses.field"}
_ABSTRACT = {"equinox.AbstractVar", "equinox.AbstractClassVar", "equinox._better_abstract.AbstractVar"}


def _base_classes(cls: griffe.Class) -> list[griffe.Class]:
    bases = []
    for base in cls.bases:
        with suppress(Exception):
            target = cls.modules_collection[base.canonical_path if isinstance(base, griffe.Expr) else base]
            bases.append(target.final_target if target.is_alias else target)
    return [base for base in bases if isinstance(base, griffe.Class)]


def _is_module(cls: griffe.Class, seen: frozenset[str] = frozenset()) -> bool:
    if cls.path in seen:
        return False
    for base in cls.bases:
        if isinstance(base, griffe.Expr) and base.canonical_path in _MODULE:
            return True
    return any(_is_module(base, seen | {cls.path}) for base in _base_classes(cls))


def _lineage(cls: griffe.Class) -> list[griffe.Class]:
    """The Equinox classes of the MRO, root first (a linearisation good enough for single inheritance)."""
    order: list[griffe.Class] = []
    for base in _base_classes(cls):
        if _is_module(base):
            order.extend(c for c in _lineage(base) if c not in order)
    return [*order, cls]


def _path(expression) -> str | None:
    """The canonical path of an annotation expression (``AbstractVar[int]``: its ``left``), None for text."""
    return expression.canonical_path if isinstance(expression, griffe.Expr) else None


def _field_arguments(value) -> dict:
    if isinstance(value, griffe.ExprCall) and value.function.canonical_path in _FIELD:
        return {argument.name: argument.value for argument in value.arguments if hasattr(argument, "name")}
    return {}


def _parameters(cls: griffe.Class) -> list[griffe.Parameter]:
    fields: dict[str, griffe.Parameter] = {}
    for owner in _lineage(cls):
        for member in owner.members.values():
            if member.is_alias or not member.is_attribute or member.annotation is None:
                continue
            if "property" in member.labels or (
                "class-attribute" in member.labels and "instance-attribute" not in member.labels
            ):
                continue
            annotation = member.annotation
            if _path(annotation) in _ABSTRACT or _path(getattr(annotation, "left", None)) in _ABSTRACT:
                continue
            arguments = _field_arguments(member.value)
            if str(arguments.get("init", "True")) == "False":
                continue
            kind = (
                griffe.ParameterKind.keyword_only
                if str(arguments.get("kw_only", "False")) == "True"
                else griffe.ParameterKind.positional_or_keyword
            )
            if "default_factory" in arguments:
                default = griffe.ExprCall(function=arguments["default_factory"], arguments=[])
            elif arguments:
                default = arguments.get("default")
            else:
                default = member.value
            fields[member.name] = griffe.Parameter(
                member.name, annotation=annotation, kind=kind, default=default, docstring=member.docstring
            )
    values = list(fields.values())
    keyword = [p for p in values if p.kind is griffe.ParameterKind.keyword_only]
    return [p for p in values if p.kind is not griffe.ParameterKind.keyword_only] + keyword


def _own_init(cls: griffe.Class) -> bool:
    """Whether the class or an Equinox parent defines ``__init__`` in its source (Equinox keeps that one)."""
    return any(
        "__init__" in c.members and not c.members["__init__"].extra["jaxnls"].get("generated") for c in _lineage(cls)
    )


def _visit(obj, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    for member in list(obj.members.values()):
        if member.is_alias or not (member.is_module or member.is_class):
            continue
        if member.is_class and _is_module(member) and not _own_init(member):
            init = griffe.Function(
                "__init__",
                lineno=0,
                endlineno=0,
                parent=member,
                parameters=griffe.Parameters(
                    griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword),
                    *_parameters(member),
                ),
                returns="None",
            )
            init.extra["jaxnls"]["generated"] = True
            member.set_member("__init__", init)
        _visit(member, seen)


class EquinoxModules(griffe.Extension):
    """Give every Equinox module without an ``__init__`` of its own the dataclass one."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        _visit(pkg, set())
