"""Sphinx fixes for the adlearn book (loaded by book/_config.yml, ``sphinx: local_extensions``).

- **Every script once per page.** jupyter-book 1.x adds ``sphinx_thebe`` to every build, and its
  inline configuration script (``const THEBE_JS_URL = ...``) reaches the page twice, which the
  browser reports as ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared`` on every
  page. Before a page is written, repeated scripts (same file and attributes, or same inline body)
  are dropped, keeping the first.
"""

from __future__ import annotations


def _script_key(script) -> tuple:
    """What makes two entries of ``script_files`` the same script: its file, attributes and body."""
    filename = str(getattr(script, "filename", script) or "")  # "" or None for an inline script
    attributes = tuple(sorted((key, str(value)) for key, value in getattr(script, "attributes", {}).items()))
    return filename, attributes


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        key = _script_key(script)
        if key in seen:
            continue
        seen.add(key)
        kept.append(script)
    scripts[:] = kept


def setup(app):
    # After every extension that adds scripts on this event (the default priority is 500).
    app.connect("html-page-context", drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
