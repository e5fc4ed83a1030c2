"""Shared machinery of the SGLang bundle's import stubs (scripts/make_sglang_bundle.sh).

The GPU host runs torch 2.11 on Python 3.12; SGLang 0.5.23's compiled companions (sglang-kernel,
flashinfer, sgl-flash-mla, ...) are built for torch 2.14.1 and cannot load there. Each stub package
calls `make_stub_package(__name__, ...)` so that SGLang's module-level imports of it succeed:

- any attribute of the package, and any submodule (`import pkg.a.b`), exists;
- a name that starts with a capital letter is a class: it can be subclassed, used in annotations
  and `isinstance` checks, and instantiated (SGLang's FlashInfer MLA backend builds its wrapper
  objects in its constructor), but every method or attribute of an instance raises;
- a name ending in Error or Exception (Warning) is a plain Exception (Warning) subclass, so that
  `except` clauses naming it work;
- any other name is a function that raises when called; its own attributes are further stubs.

What raises is NotImplementedError (a subclass, StubCalledError), naming the stub and the call.
"""

import importlib.abc
import importlib.machinery
import sys

STUB_VERSION = "0.0.0+sglang.bundle.stub"  # below any version a caller may require


class StubCalledError(NotImplementedError):
    pass


def _fail(qualname, package, action="called"):
    top = package.split(".")[0]
    raise StubCalledError(
        f"{qualname} was {action}, but it comes from an import stub of the SGLang bundle "
        f"(scripts/sglang_bundle/stubs/{top}): the real {_WHAT.get(top, top)} is not installed on this machine"
    )


_WHAT = {}  # top-level stub package -> what it stands in for, for error messages


class _StubClassMeta(type):
    """Class-level attributes of a stub class (`Enum.MEMBER`, `Cls.helper`) are stubs too."""

    def __getattr__(cls, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _stub_attribute(f"{cls._stub_qualname}.{name}", name, cls._stub_package)
        setattr(cls, name, value)
        return value


class _StubInstanceBase(metaclass=_StubClassMeta):
    """Base of every stub class: instances are inert; using them raises."""

    _stub_qualname = "stub"
    _stub_package = "stub"

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        _fail(f"{type(self)._stub_qualname}(...).{name}", type(self)._stub_package, "used")

    def __call__(self, *args, **kwargs):
        _fail(f"{type(self)._stub_qualname}(...)()", type(self)._stub_package)


class _StubFunction:
    """A stub function: calling it raises; its attributes are further stubs."""

    def __init__(self, qualname, package):
        self._stub_qualname = qualname
        self._stub_package = package

    def __call__(self, *args, **kwargs):
        _fail(self._stub_qualname, self._stub_package)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        child = _stub_attribute(f"{self._stub_qualname}.{name}", name, self._stub_package)
        object.__setattr__(self, name, child)
        return child

    def __repr__(self):
        return f"<import stub {self._stub_qualname}>"


def _stub_attribute(qualname, name, package):
    if name.endswith(("Error", "Exception")):  # caught in `except` clauses: a real exception class
        return type(name, (Exception,), {"__module__": package, "__qualname__": name})
    if name.endswith("Warning"):
        return type(name, (Warning,), {"__module__": package, "__qualname__": name})
    if name[:1].isupper():
        return type(name, (_StubInstanceBase,), {
            "__module__": package, "__qualname__": name, "_stub_qualname": qualname, "_stub_package": package,
        })
    return _StubFunction(qualname, package)


def _module_getattr(module):
    def __getattr__(name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        full = f"{module.__name__}.{name}"
        if full in sys.modules:
            return sys.modules[full]
        value = _stub_attribute(full, name, module.__name__)
        setattr(module, name, value)
        return value

    return __getattr__


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes every submodule of a stub package a stub module."""

    def __init__(self, root):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        if fullname.startswith(self.root + "."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__path__ = []
        module.__getattr__ = _module_getattr(module)


def make_stub_package(name, what, version=None):
    """Turns the package `name` (its __init__ calls this) into a stub standing in for `what`."""
    module = sys.modules[name]
    _WHAT[name] = what
    module.__getattr__ = _module_getattr(module)
    # A version for callers that read one: transformers imports a package without dist-info to read
    # its __version__ and fails on none.
    module.__version__ = version or STUB_VERSION
    if not any(isinstance(f, _StubFinder) and f.root == name for f in sys.meta_path):
        sys.meta_path.append(_StubFinder(name))
