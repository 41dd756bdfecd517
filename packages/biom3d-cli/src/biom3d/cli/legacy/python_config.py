"""Read the original's Python configs (``config_default.py``, the ``<date>-<desc>.py`` files its
auto-configuration and GUI write) without running them.

The original imported these files, so they are Python: module-level ``UPPER_CASE = value`` lines, modules
written ``Dict(fct="Name", kwargs=Dict(...))``, values that refer to earlier ones (``patch_size=PATCH_SIZE``)
and sometimes computed ones (``NUM_CLASSES+1``, ``max(NUM_WORKERS//2, 0)``, ``os.path.join(...)``), ending with
``CONFIG = Dict(**globals().copy())``, which its loader read. Here the file is only parsed (:func:`ast.parse`)
and the literal part evaluated: constants, lists, tuples, dicts, sets, unary minus, ``Dict`` / ``AttrDict`` /
``dict`` calls with keyword arguments, the numpy scalars its auto-configuration printed (``np.int64(40)``) and
names of earlier assignments. A computed value is not guessed: it is left out and named, with its line, in the
notes. A file that does more than assign values (a call statement, ``__import__``, ``eval``, ``open``, dunder
attributes, shell commands) is refused, naming the line: the original would have run that code.
"""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

_DICTS = {"Dict", "AttrDict", "dict"}
_NUMPY_SCALAR = re.compile(r"(np|numpy)\.(u?int(8|16|32|64)?|int_|float(16|32|64)?|float_|double|bool_?)")
_CODE_BUILTINS = {"__import__", "eval", "exec", "compile", "open", "breakpoint", "getattr", "setattr", "delattr",
                  "input"}
_CODE_ATTRS = re.compile(r"system|popen|Popen|startfile|exec\w*|spawn\w*|fork\w*|kill\w*|remove|removedirs|unlink|"
                         r"rmtree|rmdir|check_call|check_output|getoutput|getstatusoutput")
_CODE_MODULES = {"subprocess", "ctypes", "importlib", "runpy", "pickle", "marshal", "pty", "socket", "shutil",
                 "builtins"}
_SAFE_DUNDERS = {"__name__", "__file__", "__doc__"}
_UPPER = re.compile(r"[A-Z][A-Z0-9_]*")
_MISSING = object()  # a value that is not known: left out


def read_legacy_python(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Read an original Python config as (upper-case names -> values, notes on what was left out).

    Raises ValueError naming the file and line on a syntax error or a file that runs code; nothing in the file
    is ever imported, compiled to run or executed.
    """
    path = Path(path)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a UTF-8 text file ({exc})") from exc
    try:
        tree = ast.parse(source, filename=str(path))  # a syntax tree only: nothing is compiled to run
    except SyntaxError as exc:
        raise ValueError(f"{path}, line {exc.lineno}: not valid Python: {exc.msg}; nothing in it was run") from exc
    except (ValueError, RecursionError, MemoryError) as exc:
        raise ValueError(f"{path}: not readable as Python source: {exc}") from exc
    for node in ast.walk(tree):
        reason = _runs_code(node)
        if reason is not None:
            raise ValueError(f"{path}, line {node.lineno}: {reason}: a config file only assigns values, so this one "
                             "is not read (nothing in it was run)")
    module = _Module()
    for statement in tree.body:
        module.statement(statement, path)
    return module.config(), module.notes


def _runs_code(node: ast.AST) -> str | None:
    """Why ``node`` would run code beyond computing a value, or None. Checked everywhere in the file."""
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
        if node.id in _CODE_BUILTINS:
            return f"it uses {node.id}"
        if node.id.startswith("__") and node.id.endswith("__") and node.id not in _SAFE_DUNDERS:
            return f"it uses {node.id}"
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("__") and node.attr.endswith("__") and not _is_super(node.value):
            return f"it uses .{node.attr}"
        if _CODE_ATTRS.fullmatch(node.attr):
            return f"it calls {_source(node)}"
    if isinstance(node, ast.Import | ast.ImportFrom):
        base = (node.module or "") if isinstance(node, ast.ImportFrom) else None
        names = [a.name for a in node.names] if base is None else [base, *(f"{base}.{a.name}" for a in node.names)]
        for name in names:
            root, last = name.split(".")[0], name.rsplit(".", 1)[-1]
            if root in _CODE_MODULES or last in _CODE_BUILTINS or _CODE_ATTRS.fullmatch(last):
                return f"it imports {name}"
    return None


class _NotLiteral(Exception):
    """A value that only running the file would give; ``reason`` says why, for the notes."""

    def __init__(self, node: ast.AST, reason: str):
        super().__init__(reason)
        self.node, self.reason = node, reason


class _Module:
    """The module's names as the original's loader would see them, with every unknown one noted."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}  # every module-level name, _MISSING when not known
        self.lines: dict[str, int] = {}
        self.notes: list[str] = []
        self.collected: dict[str, Any] | None = None  # what ``CONFIG = ...`` holds, once it is reached

    def config(self) -> dict[str, Any]:
        if self.collected is None:
            self.notes.append("no `CONFIG = Dict(**globals().copy())` line, which the original's loader needs: "
                              "the file's upper-case variables are read")
            return self._upper()
        return self.collected

    def statement(self, node: ast.stmt, path: Path) -> None:
        """Bind what ``node`` assigns; statements after ``CONFIG = ...`` no longer reach the config."""
        if isinstance(node, ast.If) and _is_main_guard(node.test):
            for other in node.orelse:  # the original imported the file under another name: only this ran
                self.statement(other, path)
            return
        effect = _call_statement(node)
        if effect is not None:
            raise ValueError(f"{path}, line {effect.lineno}: `{_source(effect)}` is a statement that runs code: a "
                             "config file only assigns values, so this one is not read (nothing in it was run)")
        if self.collected is not None:
            for name in _assigned(node):
                if _UPPER.fullmatch(name):
                    self.notes.append(f"{name} (line {node.lineno}): assigned after CONFIG, which the original "
                                      "did not read; ignored")
            return
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "CONFIG" for t in targets):
                self._collect(node.value)
                return
            for target in targets:
                self._assign(target, node.value)
        elif isinstance(node, ast.AugAssign):
            self._unknown(node.target, f"`{_source(node)}` is computed, not evaluated")
        elif isinstance(node, ast.Delete):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.values.pop(target.id, None)
                else:
                    self._unknown(target, f"`{_source(node)}` changes it in place, not evaluated")
        elif isinstance(node, ast.Import | ast.ImportFrom | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for name in _assigned(node):  # modules, functions, the Dict class: not values
                self.values[name], self.lines[name] = _MISSING, node.lineno
            if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                self._note(f"from {node.module} import *", node, "the names it brings are not read")
        elif not isinstance(node, ast.Expr | ast.Pass | ast.AnnAssign):
            kind = type(node).__name__.lower().removeprefix("async").removesuffix("star")
            for name in _assigned(node):
                self._set(name, _MISSING, node.lineno)
                self._note(name, node, f"assigned inside `{kind}`, not evaluated; left out")

    # -- assignments --------------------------------------------------------------------------------------
    def _assign(self, target: ast.expr, value: ast.expr) -> None:
        if isinstance(target, ast.Name):
            self._set(target.id, self._eval(value, target.id), target.lineno)
        elif isinstance(target, ast.Tuple | ast.List) and all(isinstance(t, ast.Name) for t in target.elts):
            names = [t.id for t in target.elts if isinstance(t, ast.Name)]
            items = self._eval(value, ", ".join(names))
            if isinstance(items, list) and len(items) == len(names):
                for name, item in zip(names, items, strict=True):
                    self._set(name, item, target.lineno)
            else:
                for name in names:
                    self._set(name, _MISSING, target.lineno)
                if items is not _MISSING:
                    self._note(", ".join(names), value, "unpacked from a value of another length, not evaluated")
        else:
            self._unknown(target, f"`{_source(target)} = ...` changes it in place, not evaluated")

    def _unknown(self, target: ast.expr, why: str) -> None:
        """``X[...] = v``, ``X.a = v``, ``X += v``: X is no longer known (applying it would be guessing)."""
        root = target
        while isinstance(root, ast.Attribute | ast.Subscript | ast.Starred):
            root = root.value
        if isinstance(root, ast.Name):
            self._set(root.id, _MISSING, target.lineno)
            self._note(root.id, target, f"{why}; left out")

    def _collect(self, value: ast.expr) -> None:
        """``CONFIG = ...``: the original's loader read this. Usually all globals so far, else a dict."""
        if any(isinstance(n, ast.Name) and n.id == "globals" for n in ast.walk(value)):
            self.collected = self._upper()
            return
        found = self._eval(value, "CONFIG")
        if not isinstance(found, dict):
            if found is not _MISSING:
                self._note("CONFIG", value, "not a mapping; the file's upper-case variables are read instead")
            found = self._upper()
        self.collected = found

    def _set(self, name: str, value: Any, line: int) -> None:
        self.values.pop(name, None)  # a rebinding moves the name to where the file now defines it
        self.values[name], self.lines[name] = value, line

    def _upper(self) -> dict[str, Any]:
        return {k: v for k, v in self.values.items() if _UPPER.fullmatch(k) and v is not _MISSING}

    def _note(self, where: str, node: ast.AST, what: str) -> None:
        self.notes.append(f"{where} (line {getattr(node, 'lineno', '?')}): {what}")

    # -- values -------------------------------------------------------------------------------------------
    def _eval(self, node: ast.expr, where: str) -> Any:
        """The value of ``node``, or _MISSING with a note naming ``where`` and the line."""
        try:
            return self._literal(node, where)
        except _NotLiteral as exc:
            self._note(where, exc.node, f"{exc.reason}; left out")
            return _MISSING

    def _literal(self, node: ast.expr, where: str) -> Any:
        """Evaluate a literal node; a dict entry that is not literal is left out alone, with its own note."""
        if isinstance(node, ast.Constant):
            if node.value is None or isinstance(node.value, bool | int | float | str):
                return node.value
            raise _NotLiteral(node, f"`{_source(node)}` is not a plain value")
        if isinstance(node, ast.List | ast.Tuple | ast.Set):
            if isinstance(node, ast.Set):
                return list(dict.fromkeys(self._key(item, where) for item in node.elts))
            return [self._literal(item, where) for item in node.elts]
        if isinstance(node, ast.Dict):
            if any(key is None for key in node.keys):
                raise _NotLiteral(node, f"`{_source(node)}` unpacks another mapping, not evaluated")
            keys = [self._key(key, where) for key in node.keys if key is not None]
            return self._entries(where, zip(keys, node.values, strict=True))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd) and \
                isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        if isinstance(node, ast.Call):
            return self._call(node, where)
        if isinstance(node, ast.Name):
            if node.id not in self.values:
                raise _NotLiteral(node, f"`{node.id}` is not assigned earlier in the file")
            if self.values[node.id] is _MISSING:
                raise _NotLiteral(node, f"refers to {node.id} (line {self.lines[node.id]}), which is not known")
            return copy.deepcopy(self.values[node.id])  # no shared objects: the result dumps without anchors
        raise _NotLiteral(node, f"`{_source(node)}` is computed, not evaluated")

    def _call(self, node: ast.Call, where: str) -> Any:
        """``Dict(k=v, ...)`` as a dict, ``np.int64(40)`` as 40; any other call is computed."""
        callee = _source(node.func)
        if (callee in _DICTS or isinstance(node.func, ast.Attribute) and node.func.attr in _DICTS - {"dict"}) \
                and not node.args and all(k.arg for k in node.keywords):
            return self._entries(where, ((k.arg, k.value) for k in node.keywords))
        if _NUMPY_SCALAR.fullmatch(callee) and len(node.args) == 1 and not node.keywords:
            number = self._literal(node.args[0], where)
            if isinstance(number, int | float | bool):
                kind = callee.rsplit(".", 1)[-1]
                cast = bool if kind.startswith("bool") else float if kind.startswith(("float", "double")) else int
                return cast(number)
        raise _NotLiteral(node, f"`{_source(node)}` is computed, not evaluated")

    def _key(self, node: ast.expr, where: str) -> Any:
        """A dict key or set item: a constant (a list or dict there could not even be built)."""
        key = self._literal(node, where)
        if isinstance(key, list | dict):
            raise _NotLiteral(node, f"`{_source(node)}` cannot be a key, not evaluated")
        return key

    def _entries(self, where: str, entries: Any) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, value in entries:
            item = self._eval(value, f"{where}.{key}")
            if item is not _MISSING:
                out[key] = item
        return out


def _call_statement(node: ast.stmt) -> ast.Expr | None:
    """The first call made as a statement in ``node`` or its blocks (not in function or class bodies)."""
    if isinstance(node, ast.Expr):
        return node if any(isinstance(n, ast.Call) for n in ast.walk(node)) else None
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return None
    blocks = [getattr(node, field, []) for field in ("body", "orelse", "finalbody")]
    blocks += [part.body for part in [*getattr(node, "handlers", []), *getattr(node, "cases", [])]]  # except, case
    found = (_call_statement(child) for block in blocks for child in block)
    return next((f for f in found if f is not None), None)


def _assigned(node: ast.stmt) -> list[str]:
    """The module-level names a statement binds (in any of its branches)."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return [(a.asname or a.name).split(".")[0] for a in node.names]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    names: list[str] = []
    for child in ast.walk(node):
        if isinstance(child, ast.Name) and isinstance(child.ctx, ast.Store) and child.id not in names:
            names.append(child.id)
    return names


def _is_super(node: ast.expr) -> bool:
    """``super()``: the original's ``Dict`` class calls ``super().__init__``, the one dunder a config has."""
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "super"


def _is_main_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and len(test.comparators) == 1 and isinstance(test.comparators[0], ast.Constant)
            and test.comparators[0].value == "__main__")


def _source(node: ast.AST, limit: int = 70) -> str:
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
