"""The one cache folder every generator and pretrained part shares."""

from pathlib import Path

from adlearn.cache import cache_dir


def test_cache_dir_follows_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("ADLEARN_CACHE", str(tmp_path / "here"))
    assert cache_dir() == tmp_path / "here"


def test_cache_dir_defaults_to_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("ADLEARN_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == Path(tmp_path) / ".cache" / "adlearn"
