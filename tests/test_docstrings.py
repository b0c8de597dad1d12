"""Every name in every public ``__all__`` is documented, in one docstring style (Google, maths in reST roles).

The API reference (mkdocstrings, ``docstring_style: google``) is generated from these docstrings, so a
missing or stale ``Args:`` entry is a hole or a lie in the published documentation. The rules, per public
module (a module of ``jaxnls`` whose dotted name has no part starting with ``_`` and that defines
``__all__``, ``jaxnls`` itself included):

* the module has a docstring;
* every name in ``__all__`` has a non-empty docstring of its own: not inherited from a base class, not the
  ``Name(field, ...)`` text that dataclasses, Equinox modules and NamedTuples generate; a module object its
  module docstring; a constant (anything that is not a class, a callable or a module) an attribute
  docstring, the string literal right after its assignment;
* a function, or a callable that is not a class: every parameter of its signature except ``self`` / ``cls``
  is an entry of ``Args:`` (``*args`` / ``**kwargs`` too, unless listed in ``PASS_THROUGH`` with a reason),
  every ``Args:`` entry is a parameter, and there is a ``Returns:`` section unless it returns None (return
  annotation, or no ``return <value>`` in its source); a generator has ``Yields:``;
* a class: its docstring documents every constructor parameter (``__init__``, the generated one of an
  Equinox module or dataclass, a NamedTuple's fields) under ``Args:`` or ``Attributes:``, or inherits the
  field from a jaxnls base whose ``Attributes:`` documents it (the solvers' shared tolerances are written
  once, on ``AbstractLeastSquaresSolver``); every ``Args:``
  entry is a constructor parameter, every ``Attributes:`` entry a constructor parameter or an attribute of
  the class (fields, properties, ``self.name = ...`` in its methods); every public method, property or
  class method it defines itself, or inherits from a private (``_``-named) jaxnls base, has a docstring
  (an override of a documented method of a jaxnls base may leave it to the base, as ``inspect.getdoc``
  does), and a method whose docstring has an ``Args:`` section lists exactly its parameters there;
* an enum: every member is an entry of the class docstring's ``Attributes:``;
* one style: no reST field lists (``:param x:``, ``:returns:``, ``:rtype:``), no numpy-style underlined
  section headers, no control characters (a tab is the trace of ``\\top`` in a string that is not
  r-prefixed); every line at the entry indentation of ``Args:`` / ``Attributes:`` is one ``name: text`` or
  ``name (type): text`` entry (``a, b: text`` is one entry named "a, b" to the API reference's parser).
"""

from __future__ import annotations

import ast
import enum
import functools
import importlib
import importlib.util
import inspect
import pkgutil
import re
import sys
import textwrap
import types
from pathlib import Path

import pytest

import jaxnls

# (qualified name, parameter) -> why a parameter of the signature needs no Args: entry. Only for genuine
# pass-through arguments; an argument a caller chooses a value for is documented.
PASS_THROUGH: dict[tuple[str, str], str] = {}

# qualified name -> why a name of a public __all__ is not held to these rules (e.g. a third-party object
# re-exported as it is: its documentation is its own project's).
EXEMPT: dict[str, str] = {}

_SECTIONS = {
    "Args",
    "Arguments",
    "Attributes",
    "Example",
    "Examples",
    "Keyword Args",
    "Keyword Arguments",
    "Methods",
    "Note",
    "Notes",
    "Other Parameters",
    "Parameters",
    "Raises",
    "References",
    "Return",
    "Returns",
    "See Also",
    "Todo",
    "Warning",
    "Warnings",
    "Warns",
    "Yield",
    "Yields",
}
_ARG_SECTIONS = {"Args", "Arguments", "Parameters", "Keyword Args", "Keyword Arguments", "Other Parameters"}
_ENTRY = re.compile(r"^(?P<name>\*{0,2}[A-Za-z_]\w*)\s*(?:\([^()]*(?:\([^()]*\)[^()]*)*\))?\s*:(?:\s|$)")
_SEVERAL = re.compile(r"^\*{0,2}\w+(?:\s*[,/]\s*\*{0,2}\w+)+\s*:")
_REST_FIELD = re.compile(r"^\s*:(param|parameter|arg|argument|type|returns?|rtype|raises?|yields?)\b[^:]*:", re.M)
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_NUMPY_HEADER = re.compile(r"^\s*(Parameters|Returns|Yields|Raises|Attributes|Other Parameters)\s*\n\s*-{3,}\s*$", re.M)


# ---------------------------------------------------------------------------------------------- discovery


def _public_modules() -> list[types.ModuleType]:
    modules = [jaxnls]
    for info in pkgutil.walk_packages(jaxnls.__path__, "jaxnls."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError as error:  # an optional dependency (flax) that is not installed
            if error.name is not None and not error.name.startswith("jaxnls"):
                continue
            raise
        if hasattr(module, "__all__"):
            modules.append(module)
    return modules


PUBLIC_MODULES = _public_modules()


# ----------------------------------------------------------------------------------------------- parsing


def _sections(doc: str) -> dict[str, list[str]]:
    """Google-style sections of a cleaned docstring: header -> its body lines (dedented, blank lines kept)."""
    lines = doc.splitlines()
    sections: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.endswith(":") and stripped[:-1] in _SECTIONS:
            indent = len(lines[i]) - len(lines[i].lstrip())
            body = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                body.append(lines[i])
                i += 1
            while body and not body[-1].strip():
                body.pop()
            sections.setdefault(stripped[:-1], []).extend(textwrap.dedent("\n".join(body)).splitlines())
        else:
            i += 1
    return sections


def _entries(body: list[str], where: str, problems: list[str]) -> set[str]:
    """The names documented by a section body: its lines at the first line's indentation."""
    names: set[str] = set()
    for line in body:
        if not line.strip() or line[0].isspace():
            continue  # a blank line or a continuation line
        match = _ENTRY.match(line)
        if match is None:
            if _SEVERAL.match(line):
                problems.append(f"{where}: several names in one entry (one `name: text` each): {line.strip()[:60]!r}")
            else:
                problems.append(f"{where}: not a `name: text` entry: {line.strip()[:60]!r}")
            continue
        names.add(match["name"].lstrip("*"))
    return names


def _style_problems(doc: str) -> list[str]:
    """Problems of a raw (uncleaned) docstring's style."""
    problems = []
    if _CONTROL.search(doc):
        problems.append("a control character (a tab? `\\t` of `\\top` in a string that is not r-prefixed)")
    if _REST_FIELD.search(doc):
        problems.append("reST field list (:param: / :returns:) instead of Google sections")
    if _NUMPY_HEADER.search(doc):
        problems.append("numpy-style underlined section header instead of `Header:`")
    return problems


# -------------------------------------------------------------------------------------------------- rules


def _clean(doc: str | None) -> str:
    return inspect.cleandoc(doc) if doc and doc.strip() else ""


def _generated_doc(cls: type, doc: str) -> bool:
    """The docstring a dataclass / Equinox module / NamedTuple writes for a class without one."""
    return doc.startswith(f"{cls.__name__}(") and doc.rstrip().endswith(")") and "\n" not in doc.strip()


def _own_class_doc(cls: type) -> str:
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str) or not doc.strip() or _generated_doc(cls, doc.strip()):
        return ""
    return inspect.cleandoc(doc)


def _returns_value(function) -> str | None:
    """``"Returns"``, ``"Yields"`` or None (returns None), from the annotation or else the source."""
    function = inspect.unwrap(function)
    if inspect.isgeneratorfunction(function):
        return "Yields"
    try:
        annotation = inspect.signature(function).return_annotation
    except (TypeError, ValueError):
        annotation = inspect.Signature.empty
    if annotation is not inspect.Signature.empty:
        text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
        if text in {"None", "NoneType", "NoReturn", "Never"} or annotation is None:
            return None
        if re.match(r"^(collections\.abc\.|typing\.)?(Generator|Iterator)\b", str(text)):
            return "Yields"
        return "Returns"
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    except (OSError, TypeError, SyntaxError):
        return "Returns"
    definition = tree.body[0]

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            yield child
            yield from walk(child)

    for node in walk(definition):
        if isinstance(node, ast.Return) and node.value is not None:
            if not (isinstance(node.value, ast.Constant) and node.value.value is None):
                return "Returns"
    return None


def _check_callable(qualname: str, obj, doc: str, problems: list[str]) -> None:
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError) as error:
        problems.append(f"{qualname}: no signature ({error})")
        return
    sections = _sections(doc)
    documented: set[str] = set()
    for header in _ARG_SECTIONS & sections.keys():
        documented |= _entries(sections[header], f"{qualname}, {header}", problems)
    wanted = []
    for name in signature.parameters:
        if name in {"self", "cls"}:
            continue
        if (qualname, name) in PASS_THROUGH:
            continue
        wanted.append(name)
    missing = [name for name in wanted if name not in documented]
    stale = sorted(documented - set(signature.parameters))
    if missing:
        problems.append(f"{qualname}: parameters missing from Args: {', '.join(missing)}")
    if stale:
        problems.append(f"{qualname}: Args entries that are not parameters: {', '.join(stale)}")
    target = obj if inspect.isroutine(obj) or hasattr(obj, "__wrapped__") else type(obj).__call__
    kind = _returns_value(target)
    if kind is not None and not any(sections.get(header) for header in (kind, kind[:-1])):
        problems.append(f"{qualname}: no {kind}: section")


def _constructor_parameters(cls: type) -> list[str] | None:
    if issubclass(cls, enum.Enum):
        return None
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):
        return list(cls._fields)
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        return []  # a builtin constructor (an Exception subclass without __init__ of its own)
    parameters = []
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) and issubclass(cls, BaseException):
            continue  # Exception's (*args, **kwargs)
        if (cls.__qualname__, name) in PASS_THROUGH:
            continue
        parameters.append(name)
    return parameters


def _class_attributes(cls: type) -> set[str]:
    """Names an instance has: class attributes, annotated fields and ``self.name = ...`` in jaxnls' methods."""
    names = set(dir(cls))
    for klass in cls.__mro__:
        names |= set(getattr(klass, "__annotations__", {}))
        if not klass.__module__.startswith("jaxnls"):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    names.add(node.attr)
    return names


def _function_of(member):
    """The function behind a method, class method, static method or property (None for anything else)."""
    if isinstance(member, (classmethod, staticmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    if isinstance(member, functools.cached_property):
        return member.func
    return member if inspect.isfunction(member) else None


def _method_doc(cls: type, name: str, member) -> str:
    """The raw docstring of a method: its own, or for an override that has none the documented base's."""
    own = getattr(_function_of(member), "__doc__", None)
    if own and own.strip():
        return own
    for base in cls.__mro__[1:]:  # an override of a documented method: the base's contract
        if name in base.__dict__ and base.__module__.startswith("jaxnls"):
            return _method_doc(base, name, base.__dict__[name])
    return ""


def _public_members(cls: type) -> dict[str, object]:
    """Public methods and properties the class defines, or inherits from a private jaxnls base (whose
    members are documented nowhere else)."""
    members: dict[str, object] = {}
    for klass in cls.__mro__:
        if klass is not cls and not (klass.__module__.startswith("jaxnls") and klass.__name__.startswith("_")):
            continue
        for name, member in vars(klass).items():
            if not name.startswith("_") and name not in members and _function_of(member) is not None:
                members[name] = (klass, member)
    return members


def _documented_by_bases(cls: type, package: str) -> set[str]:
    """The names in the ``Attributes:`` of the bases of ``cls`` defined in ``package`` (a field inherited
    from such a base is documented there)."""
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if base.__module__.split(".")[0] == package and _own_class_doc(base):
            names |= _entries(_sections(_own_class_doc(base)).get("Attributes", []), base.__qualname__, [])
    return names


def _check_class(qualname: str, cls: type, doc: str, problems: list[str]) -> None:
    sections = _sections(doc)
    args: set[str] = set()
    for header in _ARG_SECTIONS & sections.keys():
        args |= _entries(sections[header], f"{qualname}, {header}", problems)
    attributes = _entries(sections.get("Attributes", []), f"{qualname}, Attributes", problems)
    parameters = _constructor_parameters(cls)
    if parameters is None:  # an enum: its members
        members = list(cls.__members__)
        missing = [name for name in members if name not in attributes]
        if missing:
            problems.append(f"{qualname}: enum members missing from Attributes: {', '.join(missing)}")
        stale = sorted((attributes | args) - set(members) - _class_attributes(cls))
        if stale:
            problems.append(f"{qualname}: documented names that are neither members nor attributes: {', '.join(stale)}")
    else:
        inherited = _documented_by_bases(cls, "jaxnls")
        missing = [name for name in parameters if name not in args | attributes | inherited]
        if missing:
            problems.append(f"{qualname}: constructor parameters missing from Args:/Attributes: {', '.join(missing)}")
        stale_args = sorted(args - set(parameters))
        if stale_args:
            problems.append(f"{qualname}: Args entries that are not constructor parameters: {', '.join(stale_args)}")
        stale_attributes = sorted(attributes - set(parameters) - _class_attributes(cls))
        if stale_attributes:
            problems.append(
                f"{qualname}: Attributes entries that are not fields or attributes: {', '.join(stale_attributes)}"
            )
    undocumented = []
    for name, (owner, member) in _public_members(cls).items():
        raw = _method_doc(owner, name, member)
        if not raw.strip():
            undocumented.append(name)
            continue
        problems.extend(f"{qualname}.{name}: {p}" for p in _style_problems(raw))
        function = _function_of(member)
        sections = _sections(_clean(raw))
        if isinstance(member, property) or not _ARG_SECTIONS & sections.keys():
            continue
        # a method that documents its arguments documents all of them, and no others
        documented: set[str] = set()
        for header in _ARG_SECTIONS & sections.keys():
            documented |= _entries(sections[header], f"{qualname}.{name}, {header}", problems)
        parameters = [p for p in inspect.signature(function).parameters if p not in {"self", "cls"}]
        missing = [p for p in parameters if p not in documented]
        stale = sorted(documented - set(parameters))
        if missing:
            problems.append(f"{qualname}.{name}: parameters missing from Args: {', '.join(missing)}")
        if stale:
            problems.append(f"{qualname}.{name}: Args entries that are not parameters: {', '.join(stale)}")
    if undocumented:
        problems.append(f"{qualname}: methods / properties without a docstring: {', '.join(undocumented)}")


def _assignment_docstring(module_name: str, name: str, seen: frozenset[str] = frozenset()) -> str | None:
    """The attribute docstring of ``name`` where ``module_name`` assigns it, following ``from . import``."""
    if module_name in seen:
        return None
    module = sys.modules.get(module_name) or importlib.import_module(module_name)
    path = getattr(module, "__file__", None)
    if path is None:
        return None
    body = ast.parse(Path(path).read_text(encoding="utf-8")).body
    for index, statement in enumerate(body):
        targets = []
        if isinstance(statement, ast.Assign):
            targets = [t.id for t in statement.targets if isinstance(t, ast.Name)]
        elif isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            targets = [statement.target.id]
        if name in targets:
            following = body[index + 1] if index + 1 < len(body) else None
            if (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                return following.value.value
            return ""
    for statement in body:
        if isinstance(statement, ast.ImportFrom):
            for alias in statement.names:
                if (alias.asname or alias.name) == name:
                    package = module_name if path.endswith("__init__.py") else module_name.rpartition(".")[0]
                    source = importlib.util.resolve_name("." * statement.level + (statement.module or ""), package)
                    return _assignment_docstring(source, alias.name, seen | {module_name})
    return None


def _problems(module: types.ModuleType) -> list[str]:
    problems: list[str] = []
    if not _clean(module.__doc__):
        problems.append(f"{module.__name__}: no module docstring")
    problems.extend(f"{module.__name__} (module docstring): {p}" for p in _style_problems(module.__doc__ or ""))
    for name in module.__all__:
        qualname = f"{module.__name__}.{name}"
        if qualname in EXEMPT:
            continue
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType):
            if not _clean(obj.__doc__):
                problems.append(f"{qualname}: no module docstring")
            continue
        defined = getattr(obj, "__module__", None) if (inspect.isclass(obj) or inspect.isroutine(obj)) else None
        if isinstance(defined, str) and not defined.startswith("jaxnls"):
            problems.append(f"{qualname}: defined in {defined}: list it in EXEMPT with a reason, or document it")
            continue
        if inspect.isclass(obj):
            doc = _own_class_doc(obj)
            if not doc:
                problems.append(f"{qualname}: no docstring of its own")
                continue
            problems.extend(f"{qualname}: {p}" for p in _style_problems(obj.__dict__["__doc__"]))
            _check_class(qualname, obj, doc, problems)
        elif callable(obj) and (inspect.isroutine(obj) or hasattr(obj, "__wrapped__") or "__doc__" in vars(obj)):
            # functions, jit wrappers (``__wrapped__``) and callable instances with a docstring of their own
            doc = _clean(obj.__doc__)
            if not doc:
                problems.append(f"{qualname}: no docstring")
                continue
            problems.extend(f"{qualname}: {p}" for p in _style_problems(obj.__doc__))
            _check_callable(qualname, obj, doc, problems)
        else:  # a constant: the string literal after its assignment
            doc = _assignment_docstring(module.__name__, name)
            if doc is None:
                problems.append(f"{qualname}: assignment not found in the source")
            elif not doc.strip():
                problems.append(f"{qualname}: no docstring (a string literal right after its assignment)")
            else:
                problems.extend(f"{qualname}: {p}" for p in _style_problems(doc))
    return problems


@pytest.mark.parametrize("module", PUBLIC_MODULES, ids=lambda m: m.__name__)
def test_public_names_are_documented(module):
    problems = _problems(module)
    assert not problems, f"{len(problems)} documentation problem(s) in {module.__name__}:\n  " + "\n  ".join(problems)


def test_public_modules_are_found():
    names = {module.__name__ for module in PUBLIC_MODULES}
    assert {"jaxnls", "jaxnls.graph", "jaxnls.io", "jaxnls.solvers", "jaxnls.swat"} <= names


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (
            "Sum.\n\nArgs:\n    a: first.\n    b (int): second,\n        continued.\n\n    c: third.\n\nReturns:\n    x.",
            {"a", "b", "c"},
        ),
        ("Sum.\n\nArgs:\n    *args: passed on.\n    **kwargs: passed on.", {"args", "kwargs"}),
    ],
)
def test_args_parser(doc, expected):
    problems: list[str] = []
    assert _entries(_sections(doc)["Args"], "doc", problems) == expected
    assert not problems


def test_args_parser_flags_malformed_entries():
    problems: list[str] = []
    _entries(_sections("Sum.\n\nArgs:\n    a -- first.\n")["Args"], "doc", problems)
    assert problems
    problems.clear()
    _entries(_sections("Sum.\n\nArgs:\n    lower, upper: the box.\n")["Args"], "doc", problems)
    assert problems and "several names" in problems[0]
    assert _style_problems("Sum.\n\n:param a: first.\n")
    assert _style_problems("Sum.\n\nParameters\n----------\na : int\n")
    assert _style_problems("The symmetric matrix :math:`S^\top P S`.")  # "\t" + "op": not r-prefixed


def test_the_rules_catch_what_they_claim():
    import dataclasses

    def undocumented_argument(a, b=1):
        """Sum.

        Args:
            a: first.
            c: stale.

        Returns:
            a + b.
        """
        return a + b

    def no_returns(a):
        """Twice.

        Args:
            a: the value.
        """
        return 2 * a

    def returns_none(a):
        """Print.

        Args:
            a: the value.
        """
        print(a)

    problems: list[str] = []
    _check_callable("f", undocumented_argument, _clean(undocumented_argument.__doc__), problems)
    assert any("missing from Args: b" in p for p in problems)
    assert any("not parameters: c" in p for p in problems)
    problems.clear()
    _check_callable("g", no_returns, _clean(no_returns.__doc__), problems)
    assert problems == ["g: no Returns: section"]
    problems.clear()
    _check_callable("h", returns_none, _clean(returns_none.__doc__), problems)
    assert not problems

    @dataclasses.dataclass
    class Generated:
        x: int

    assert not _own_class_doc(Generated)  # "Generated(x: int)" is not documentation

    class Base:
        """Shared settings.

        Attributes:
            tolerance: shared.
        """

    class Derived(Base):
        """More settings.

        Attributes:
            size: own.
        """

    here = Derived.__module__.split(".")[0]
    assert _documented_by_bases(Derived, here) == {"tolerance"}
    assert _documented_by_bases(Derived, "jaxnls") == set()  # only the package's own bases count

    @dataclasses.dataclass
    class Config:
        """Settings.

        Attributes:
            x: documented.
        """

        x: int
        y: float = 0.0

        def method(self, z):
            """Scale.

            Args:
                w: stale.
            """
            return z

        @property
        def bare(self):
            return self.x

    problems.clear()
    _check_class("Config", Config, _own_class_doc(Config), problems)
    assert any("constructor parameters missing from Args:/Attributes: y" in p for p in problems)
    assert any("Config.method: parameters missing from Args: z" in p for p in problems)
    assert any("Config.method: Args entries that are not parameters: w" in p for p in problems)
    assert any("without a docstring: bare" in p for p in problems)
