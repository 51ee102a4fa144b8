"""`sdrt.lazy.deferred`: a module imported on the first attribute read, nothing in sys.modules before."""

import sys

import pytest

from sdrt.lazy import deferred


def test_a_deferred_module_imports_on_first_use(tmp_path, monkeypatch):
    (tmp_path / "sdrt_lazy_probe.py").write_text("VALUE = 41 + 1\ndef double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sdrt_lazy_probe", raising=False)
    probe = deferred("sdrt_lazy_probe")
    assert "sdrt_lazy_probe" not in sys.modules
    assert "not imported yet" in repr(probe)
    assert probe.VALUE == 42 and probe.double(4) == 8
    assert vars(probe)["VALUE"] == 42  # kept on the proxy: the next read does not ask the module again
    assert sys.modules["sdrt_lazy_probe"].VALUE == 42
    assert "imported" in repr(probe) and "not imported" not in repr(probe)
    with pytest.raises(AttributeError, match="nothing_here"):
        probe.nothing_here  # noqa: B018


def test_a_missing_module_fails_when_first_used_naming_it():
    probe = deferred("sdrt_no_such_module_anywhere")
    with pytest.raises(ModuleNotFoundError, match="sdrt_no_such_module_anywhere"):
        probe.anything  # noqa: B018
